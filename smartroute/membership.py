"""Peer lifecycle: who is alive, suspect or gone, decided from what we hear and ``now``.

Every transition of a peer happens here, in this one table (the h11 ``_state.py`` habit):

    event                              from            to              reported
    ---------------------------------  --------------  --------------  ---------------------
    HELLO from an unknown node         (none)          ALIVE           PeerUp
    HELLO, same node, new incarnation  ALIVE/SUSPECT   ALIVE (new)     PeerDown "replaced",
                                                                       PeerUp
    HELLO, new node, endpoint of one   ALIVE/SUSPECT   ALIVE (new)     PeerDown "replaced" of
      we know (a restart on a port)                                    the old, PeerUp
    anything heard                     SUSPECT         ALIVE           -
    silence >= suspect_after_s         ALIVE           SUSPECT         -
    silence >= dead_after_s            ALIVE/SUSPECT   (removed)       PeerDown "timeout"
    BYE                                ALIVE/SUSPECT   (removed)       PeerDown "bye"

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
    lost_at: float | None = None
    """When our link's connection to it closed (a killed process closes its sockets at once);
    what is heard afterwards cancels it."""
    hex: str = dataclasses.field(init=False)
    """The node id as printed everywhere (kept: every message received names its origin)."""

    def __post_init__(self) -> None:
        self.hex = self.node_id.hex()

    def info(self) -> PeerInfo:
        """The public view of this peer."""
        return PeerInfo(self.hex, self.endpoint, self.name, self.state.value, self.incarnation)


class Membership:
    """The peers we know, keyed by node id, with their states."""

    def __init__(self, *, suspect_after_s: float, dead_after_s: float) -> None:
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
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
            now: float) -> Peer:
        """A NEW peer is ALIVE from now."""
        peer = Peer(node_id, incarnation, endpoint, name, link, PeerState.ALIVE, now, now, now)
        self.peers[node_id] = peer
        return peer

    def remove(self, node_id: bytes) -> Peer | None:
        """Forget a peer (BYE, death or replacement)."""
        return self.peers.pop(node_id, None)

    def heard(self, peer: Peer, now: float) -> None:
        """Anything from a peer proves it alive."""
        peer.last_heard = now
        if peer.state is PeerState.SUSPECT:
            peer.state = PeerState.ALIVE

    def forgive(self, stall_s: float, now: float) -> None:
        """Our own loop did not run for ``stall_s``: nothing could be heard meanwhile, so that
        time is not counted as anyone's silence (capped at ``now``: never in the future)."""
        for peer in self.peers.values():
            if peer.lost_at is not None:
                # Heard since the loss: the loss is moot (shifting both could make them equal).
                peer.lost_at = (None if peer.last_heard > peer.lost_at
                                else min(peer.lost_at + stall_s, now))
            peer.last_heard = min(peer.last_heard + stall_s, max(peer.last_heard, now))

    def lost(self, peer: Peer, now: float) -> None:
        """Our connection to ``peer`` closed: unless it is heard again within
        ``suspect_after_s`` it is dead then, not after the whole ``dead_after_s``. A live peer
        keeps sending heartbeats on its own connection to us meanwhile."""
        peer.lost_at = now
        peer.state = PeerState.SUSPECT

    def expire(self, now: float) -> list[Peer]:
        """Mark silent peers suspect; remove and return the dead ones."""
        dead: list[Peer] = []
        for peer in self.peers.values():
            silence = now - peer.last_heard
            lost_at = peer.lost_at
            if silence >= self.dead_after_s:
                dead.append(peer)
            elif silence >= self.suspect_after_s:
                if lost_at is not None and peer.last_heard <= lost_at:
                    dead.append(peer)  # its connection closed and it has not spoken since
                else:
                    peer.state = PeerState.SUSPECT
        for peer in dead:
            del self.peers[peer.node_id]
        return dead

    def by_endpoint(self, endpoint: str) -> Peer | None:
        """The peer that advertises ``endpoint``, if any."""
        for peer in self.peers.values():
            if peer.endpoint == endpoint:
                return peer
        return None
