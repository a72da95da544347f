"""CURVE for a cluster with a secret: the keys, the ZAP authenticator, the handshake reports.

How the secret protects the mesh:

* Every node's inbox (a CURVE server) uses one **cluster keypair derived from the secret** with
  scrypt. Its public key is never sent or announced, and a CURVE client can only complete the
  handshake if it knows that public key: a node without the secret cannot connect, read or
  inject. Links are encrypted with fresh session keys (forward secrecy).
* Every node dials (as a CURVE client) with a **keypair of its own**, made at random when the
  ``Node`` is made, and its node id is a hash of that public key. The ZAP authenticator reports
  each connection's node id as its ``User-Id``, and the inbox drops any frame whose routing id
  names another node: a member cannot pose as another node.

What it does not protect: who talks to whom and how much (traffic analysis), and a member that
goes rogue (it holds the secret: it can read and send like any member).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging

import zmq
import zmq.auth
import zmq.auth.thread

from ..errors import UsageError
from ..wire import NODE_ID_BYTES

_log = logging.getLogger("smartroute.transport")

KEY_BYTES = 32
"""A CURVE key (Curve25519), before z85 encoding."""

SCRYPT_N = 2**14
"""scrypt cost: ~50 ms and 16 MiB per derivation, once per (secret, cluster) per process. It
slows a dictionary attack on a captured handshake; a long random secret is what stops one."""

SHORT_SECRET_CHARS = 16
"""Below this many characters a secret is accepted with a warning."""

ZAP_DOMAIN = b"smartroute"


@dataclasses.dataclass(frozen=True, repr=False)
class Curve:
    """The CURVE keys of one node (z85 bytes); ``repr`` shows no key."""

    server_public: bytes
    server_secret: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_secret(cls, secret: str, cluster: str) -> Curve:
        """The cluster keypair derived from ``secret`` and ``cluster``, and a new node keypair."""
        server_public, server_secret = _cluster_keypair(secret, cluster)
        while True:
            public, own_secret = zmq.curve_keypair()
            if node_id_of(public)[0] != 0:  # ids starting with a zero byte are reserved
                return cls(server_public, server_secret, public, own_secret)

    @property
    def node_id(self) -> bytes:
        """This node's id: bound to its key (see ``node_id_of``)."""
        return node_id_of(self.public)

    def __repr__(self) -> str:
        return f"Curve(node_id={self.node_id.hex()})"


def node_id_of(public_key: bytes) -> bytes:
    """The node id a CURVE public key (z85 or raw) stands for."""
    raw = zmq.utils.z85.decode(public_key) if len(public_key) != KEY_BYTES else public_key
    return hashlib.blake2b(raw, digest_size=NODE_ID_BYTES, person=b"smartroute-id").digest()


@functools.lru_cache(maxsize=8)
def _cluster_keypair(secret: str, cluster: str) -> tuple[bytes, bytes]:
    seed = hashlib.scrypt(secret.encode(), salt=b"smartroute/curve/" + cluster.encode(),
                          n=SCRYPT_N, r=8, p=1, dklen=KEY_BYTES)
    server_secret = zmq.utils.z85.encode(seed)
    return zmq.curve_public(server_secret), server_secret


def check_secret(secret: object) -> str:
    """Validate a ``secret=`` argument; a short one is allowed but logged."""
    if not isinstance(secret, str):
        raise TypeError(f"secret is a str (or None for no encryption), not "
                        f"{type(secret).__name__}")
    if not secret:
        raise UsageError("secret is empty: give a long random string, or None for no "
                         "encryption")
    if len(secret) < SHORT_SECRET_CHARS:
        _log.warning("the cluster secret has only %d characters: use %d or more random ones "
                     "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                     len(secret), SHORT_SECRET_CHARS)
    return secret


class Authenticator(zmq.auth.thread.ThreadAuthenticator):
    """The ZAP handler of one node's context: admits CURVE clients and names each by the node id
    its key stands for. Admission itself is the CURVE handshake: a client that does not know
    the cluster's public key never gets this far."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().__init__(context, log=logging.getLogger("smartroute.transport.zap"))

    def start(self) -> None:
        """Start the handler thread; call before the inbox binds."""
        super().start()
        self.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return node_id_of(client_public_key).hex()


def server_options(sock: zmq.Socket[bytes], curve: Curve) -> None:
    """Make ``sock`` (an inbox) a CURVE server of the cluster."""
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.server_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.server_secret)


def client_options(sock: zmq.Socket[bytes], curve: Curve) -> None:
    """Make ``sock`` (a link) a CURVE client of the cluster with this node's own key."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)


HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
"""What a handshake monitor listens for."""


def handshake_failure(event: int, value: int, *, secure: bool, dialled: str | None) -> str:
    """One line saying why a handshake failed, seen from our side (``dialled`` is the endpoint
    of a link we opened, None for a connection to our inbox)."""
    them = f"cannot link to {dialled}" if dialled else "refused a connection to this node"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if secure:
                return f"{them}: the other side has no secret and this node has one"
            return f"{them}: the other side uses a secret (CURVE) and this node has none"
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return f"{them}: the other side does not know the cluster secret"
        return f"{them}: handshake protocol error 0x{value:x}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"{them}: authentication refused (ZAP status {value})"
    if secure and dialled:
        # A CURVE server that cannot open our HELLO just hangs up: the usual cause is a secret
        # that differs, but it is the only case where we guess.
        return f"{them}: it closed the CURVE handshake (is its secret a different one?)"
    return f"{them}: the handshake failed (error {value})"
