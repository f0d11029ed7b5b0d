"""The handshake that opens every link between two workers: both prove the cluster secret.

Control and data connections between workers start with a challenge and
response; nothing else a peer sends is read before it succeeds. The side that
accepted the connection speaks first:

1. acceptor → dialler: :data:`MAGIC`, then a 32-byte random nonce ``a``;
2. dialler → acceptor: a 32-byte random nonce ``d``, then
   ``HMAC(secret, "dial|" + channel + "|" + a + d)``;
3. acceptor → dialler: ``HMAC(secret, "accept|" + channel + "|" + a + d)``.

HMAC is HMAC-SHA256; ``channel`` is ``control`` or ``data``, so a handshake of
one channel is worth nothing on the other, and the two directions use
different labels, so neither side can be made to compute the other's answer.
Fresh nonces on both sides make a recorded handshake useless later. Answers
are compared in constant time. The exchange has a fixed size: a peer that
sends anything else is refused after at most :data:`RESPONSE` bytes.

:class:`AcceptorHandshake` and :class:`DiallerHandshake` are sans-I/O: feed
them bytes, write what they return; once :attr:`done`, :attr:`rest` holds the
bytes that followed the handshake in the same read, the start of the
channel's own stream. A failure sets :attr:`error`.
"""

from __future__ import annotations

import hashlib
import hmac
import os

MAGIC = b"machida-auth 1\n"
NONCE = 32
MAC = hashlib.sha256().digest_size
CHALLENGE = len(MAGIC) + NONCE
RESPONSE = NONCE + MAC
CHANNELS = (b"control", b"data")


class AuthError(Exception):
    """The peer did not prove the cluster secret; the message says how it failed."""


def _mac(secret: bytes, label: bytes, channel: bytes, a: bytes, d: bytes) -> bytes:
    return hmac.new(secret, label + b"|" + channel + b"|" + a + d, hashlib.sha256).digest()


class _Handshake:
    __slots__ = ("_buffer", "_nonce", "channel", "done", "error", "rest", "secret")

    def __init__(self, secret: bytes, channel: bytes, nonce: bytes | None = None) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"no channel {channel!r}")
        self.secret = secret
        self.channel = channel
        self._nonce = os.urandom(NONCE) if nonce is None else nonce
        self._buffer = b""
        self.done = False
        self.error: AuthError | None = None
        self.rest = b""

    def _take(self, data: bytes, size: int) -> bytes | None:
        """``size`` bytes once that many arrived (kept across reads), else None."""
        self._buffer += data
        if len(self._buffer) < size:
            return None
        message, self.rest = self._buffer[:size], self._buffer[size:]
        self._buffer = b""
        return message

    def _fail(self, why: str) -> bytes:
        self.error = AuthError(why)
        return b""


class AcceptorHandshake(_Handshake):
    """The accepting side: :meth:`start` gives the challenge; :meth:`feed` checks the answer."""

    __slots__ = ()

    def start(self) -> bytes:
        return MAGIC + self._nonce

    def feed(self, data: bytes) -> bytes:
        """Bytes from the dialler; returns the proof to write back once the answer is right."""
        if self.done or self.error is not None:
            return b""
        response = self._take(data, RESPONSE)
        if response is None:
            return b""
        theirs, mac = response[:NONCE], response[NONCE:]
        expected = _mac(self.secret, b"dial", self.channel, self._nonce, theirs)
        if not hmac.compare_digest(mac, expected):
            return self._fail("it does not know the cluster secret")
        self.done = True
        return _mac(self.secret, b"accept", self.channel, self._nonce, theirs)


class DiallerHandshake(_Handshake):
    """The dialling side: answers the challenge, then checks the acceptor's proof."""

    __slots__ = ("_challenge",)

    def __init__(self, secret: bytes, channel: bytes, nonce: bytes | None = None) -> None:
        super().__init__(secret, channel, nonce)
        self._challenge: bytes | None = None

    def feed(self, data: bytes) -> bytes:
        """Bytes from the acceptor; returns the answer to write once the challenge is in."""
        if self.done or self.error is not None:
            return b""
        if self._challenge is None:
            challenge = self._take(data, CHALLENGE)
            if challenge is None:
                return b""
            if not challenge.startswith(MAGIC):
                return self._fail("it is not a machida worker (no handshake)")
            self._challenge = challenge[len(MAGIC) :]
            mine = self._nonce
            data, self.rest = self.rest, b""
            answer = mine + _mac(self.secret, b"dial", self.channel, self._challenge, mine)
            return answer + self.feed(data)
        proof = self._take(data, MAC)
        if proof is None:
            return b""
        expected = _mac(self.secret, b"accept", self.channel, self._challenge, self._nonce)
        if not hmac.compare_digest(proof, expected):
            return self._fail("it does not know the cluster secret")
        self.done = True
        return b""
