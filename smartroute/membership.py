"""Peer lifecycle: who is alive, suspect or gone, decided from what we hear and ``now``.

Every transition of a peer happens here, in this one table (the h11 ``_state.py`` habit):

    event                              from            to              reported
    ---------------------------------  --------------  --------------  ---------------------
    HELLO from an unknown node         (none)          ALIVE           PeerUp
    HELLO, same node, new incarnation  ALIVE/SUSPECT   ALIVE (new)     PeerDown "replaced",
                                                                       PeerUp
    HELLO, new node, endpoint of one   ALIVE/SUSPECT   ALIVE (new)     PeerDown "replaced" of
      we know (a restart on a port)                                    the old, PeerUp
    anything heard, connection up      SUSPECT         ALIVE           -
    connection closed (link_down)      ALIVE/SUSPECT   SUSPECT         -
    connection back (link_up)          SUSPECT         ALIVE if heard  -
    loop silent >= suspect_after_s     ALIVE           SUSPECT         -
    redial refused after a loss        ALIVE/SUSPECT   (removed)       PeerDown "timeout"
    down >= unreachable_after_s        ALIVE/SUSPECT   (removed)       PeerDown "timeout"
    never connected >= connect_timeout_s ALIVE/SUSPECT (removed)       PeerDown "timeout"
    loop silent >= dead_after_s        ALIVE/SUSPECT   (removed)       PeerDown "timeout"
    our dial of it failed (no socket)  ALIVE/SUSPECT   (removed)       PeerDown "timeout"
    BYE                                ALIVE/SUSPECT   (removed)       PeerDown "bye"
    REFUSE (other cluster, version)    ALIVE/SUSPECT   (removed)       PeerDown "refused"
    our own loop stalled (``forgive``) ALIVE/SUSPECT   unchanged       - (the stall's time
                                                                       does not count)

The rows of a failed dial, a REFUSE, a BYE and our own stall are decided by the protocol
(``Protocol.dial_failed``, ``_on_refuse``, ``_on_record``, ``tick``), every other row by a method
of ``Membership``. A peer removed as "timeout" is
dialled again (``Protocol._redial_dead``): if it answers it comes back through the first row.

Two kinds of evidence, on purpose. The *connection* (our link's ZeroMQ connection, kept up by
libzmq's ZMTP pings, which its I/O thread answers whatever Python is doing) says whether the
process and the path are alive: it decides death quickly. The peer's *loop* (anything it sent)
may be busy for seconds without being dead: its silence only makes it suspect, and dead only
when stuck for ``dead_after_s``. A link never connected yet counts as down from when it was
opened, with ``connect_timeout_s`` of grace instead of ``unreachable_after_s``.

A HELLO with an older incarnation than the one we know is stale and changes nothing.
"""

from __future__ import annotations

import dataclasses
import enum

from .events import PeerInfo


class PeerState(enum.Enum):
    """State of a peer we have a HELLO from."""

    ALIVE = "alive"
    SUSPECT = "suspect"


class HelloVerdict(enum.Enum):
    """What a HELLO means for the peer it comes from."""

    NEW = "new"
    KNOWN = "known"
    """Same node, same incarnation: a repeat, or the answer to ours."""
    STALE = "stale"
    """An older incarnation than the one we know: ignored."""


@dataclasses.dataclass(slots=True)
class Peer:
    """A node we have a HELLO from, and the link we send to it on."""

    node_id: bytes
    incarnation: int
    endpoint: str
    name: str
    link: int
    state: PeerState
    last_heard: float
    last_sent: float
    last_digest: float
    snapshot_sent_at: float = float("-inf")
    """When we last answered its SNAPSHOT_REQUEST, to bound how often."""
    hello_sent_at: float = float("-inf")
    """When we last answered its HELLO with ours, to bound how often."""
    down_since: float | None = None
    """Since when our link's connection to it is down (None: up); set at the start, until the
    link's first handshake."""
    connected_once: bool = False
    """The link's connection was up at least once (a first connection gets more grace)."""
    refused: bool = False
    """A redial after the connection went down was refused: nobody listens there any more."""
    echo_us: int = 0
    """Its last heartbeat's clock, to echo in ours (the round trip, see wire.Heartbeat)."""
    echo_at: float = 0.0
    """When we received that heartbeat."""
    rtt_s: float | None = None
    """Round trip through both loops, smoothed (an exponential average of heartbeat echoes)."""
    hex: str = dataclasses.field(init=False)
    """The node id as printed everywhere (kept: every message received names its origin)."""

    def __post_init__(self) -> None:
        self.hex = self.node_id.hex()

    def info(self) -> PeerInfo:
        """The public view of this peer."""
        return PeerInfo(self.hex, self.endpoint, self.name, self.state.value, self.incarnation,
                        self.rtt_s)


class Membership:
    """The peers we know, keyed by node id, with their states."""

    def __init__(self, *, suspect_after_s: float, dead_after_s: float,
                 unreachable_after_s: float, connect_timeout_s: float) -> None:
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
        self.unreachable_after_s = unreachable_after_s
        self.connect_timeout_s = connect_timeout_s
        self.peers: dict[bytes, Peer] = {}

    def judge_hello(self, node_id: bytes, incarnation: int) -> HelloVerdict:
        """Classify a HELLO; a NEW verdict may still need ``replaced_by`` checks first."""
        peer = self.peers.get(node_id)
        if peer is None or peer.incarnation < incarnation:
            return HelloVerdict.NEW
        if peer.incarnation > incarnation:
            return HelloVerdict.STALE
        return HelloVerdict.KNOWN

    def replaced_by(self, node_id: bytes, incarnation: int, endpoint: str) -> list[Peer]:
        """Peers a NEW HELLO replaces: its older incarnation, or another node on its endpoint."""
        return [
            peer for peer in self.peers.values()
            if (peer.node_id == node_id and peer.incarnation < incarnation)
            or (peer.node_id != node_id and peer.endpoint == endpoint)
        ]

    def add(self, node_id: bytes, incarnation: int, endpoint: str, name: str, link: int,
            now: float, *, connected: bool = False) -> Peer:
        """A NEW peer is ALIVE from now; its link's connection is down until ``link_up``
        unless ``connected``."""
        peer = Peer(node_id, incarnation, endpoint, name, link, PeerState.ALIVE, now, now, now)
        if connected:
            peer.connected_once = True
        else:
            peer.down_since = now
        self.peers[node_id] = peer
        return peer

    def remove(self, node_id: bytes) -> Peer | None:
        """Forget a peer (BYE, death or replacement)."""
        return self.peers.pop(node_id, None)

    def heard(self, peer: Peer, now: float) -> None:
        """Anything from a peer proves its loop alive."""
        peer.last_heard = now
        if peer.state is PeerState.SUSPECT and peer.down_since is None:
            peer.state = PeerState.ALIVE

    def forgive(self, stall_s: float, now: float) -> None:
        """Our own loop did not run for ``stall_s``: nothing could be heard or seen meanwhile,
        so that time is not counted as anyone's silence, nor as a connection's downtime
        (capped at ``now``: never in the future)."""
        for peer in self.peers.values():
            peer.last_heard = min(peer.last_heard + stall_s, max(peer.last_heard, now))
            if peer.down_since is not None:
                peer.down_since = min(peer.down_since + stall_s, now)

    def link_down(self, peer: Peer, now: float) -> None:
        """Our link's connection to ``peer`` closed (a killed process's kernel closes it at
        once; libzmq closes it when pings go unanswered): dead unless it is back within
        ``unreachable_after_s``."""
        if peer.down_since is None:
            peer.down_since = now
        peer.state = PeerState.SUSPECT

    def link_up(self, peer: Peer, now: float) -> None:
        """Our link's connection to ``peer`` completed its handshake (again)."""
        peer.down_since = None
        peer.connected_once = True
        peer.refused = False
        if now - peer.last_heard < self.suspect_after_s:
            peer.state = PeerState.ALIVE

    def link_refused(self, peer: Peer) -> None:
        """A redial to ``peer`` failed after its connection went down: nobody listens there.
        A link never connected yet may report refusals from before the peer listened (a
        dial to a restarting node's port): it has ``connect_timeout_s`` instead."""
        if peer.down_since is not None and peer.connected_once:
            peer.refused = True

    def expire(self, now: float) -> list[tuple[Peer, str]]:
        """Mark busy or unreachable peers suspect; remove and return the dead ones, each with
        why it is dead."""
        dead: list[tuple[Peer, str]] = []
        for peer in self.peers.values():
            silence = now - peer.last_heard
            down = peer.down_since
            if peer.refused:
                dead.append((peer, "its connection closed and a redial was refused"))
            elif down is not None and now - down >= (
                    self.unreachable_after_s if peer.connected_once else self.connect_timeout_s):
                dead.append((peer, f"unreachable for {now - down:.2f} s (pings unanswered or "
                                   "connection down)"))
            elif silence >= self.dead_after_s:
                dead.append((peer, f"its event loop has been silent for {silence:.2f} s "
                                   "(stuck) although its connection is alive"))
            elif silence >= self.suspect_after_s or down is not None:
                peer.state = PeerState.SUSPECT
        for peer, _ in dead:
            del self.peers[peer.node_id]
        return dead

    def by_endpoint(self, endpoint: str) -> Peer | None:
        """The peer that advertises ``endpoint``, if any."""
        for peer in self.peers.values():
            if peer.endpoint == endpoint:
                return peer
        return None
