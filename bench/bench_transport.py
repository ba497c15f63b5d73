"""Secure transport benchmarks: prints figures (never asserts). Run: PYTHONPATH=. python bench/bench_transport.py

Each figure is measured against a baseline doing the same cryptography with ``cryptography`` directly,
in the same run, repeated ``RUNS`` times (median, min-max):

* datagram seal+open: ``SecureTransport.seal_datagram`` + ``receive_datagram`` (header, counter nonce,
  replay window, session lookup) vs raw ``ChaCha20Poly1305.encrypt``+``decrypt`` of the same payload
  with the same 13-byte header as associated data and a fresh 12-byte counter nonce.
* stream send+feed of 16 KiB frames: ``StreamSession.send`` + ``feed`` vs raw encrypt+decrypt.
* IKpsk2 handshake vs XXpsk0 handshake, both through the cores (CPU per handshake, not latency).
* handshake: a full XXpsk0 handshake between two ``SecureTransport`` cores (4 datagrams, including the
  confirmation) vs the same public-key work done raw: 2 X25519 keygens + 6 X25519 exchanges (ee, es, se
  on both sides) + 2 Ed25519 verifications (identity bindings) + 6 ChaCha20Poly1305 seal/open pairs
  (payloads and static keys). The raw baseline skips BLAKE2s HKDF/hashing and the library's Python
  state machine, which is what the ratio shows.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from mesh.transport import Outgoing, StreamSession  # noqa: E402
from mesh.transport.identity import BINDING_CONTEXT  # noqa: E402
from transport_helpers import PSK, admit_all, ident, transport  # noqa: E402

RUNS = 5


def _summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):,.0f}/s (min {min(xs):,.0f}, max {max(xs):,.0f})"


def _ratio(ours: list[float], base: list[float]) -> str:
    rs = [o / b for o, b in zip(ours, base)]
    return f"ratio ours/baseline median {statistics.median(rs):.2f} (min {min(rs):.2f}, max {max(rs):.2f})"


def _pair():
    a, b = transport("a"), transport("b", 1)
    (m1,) = a.connect("b", 0.0)
    _, (m2,) = b.receive_datagram("a", m1.data, 0.0)
    _, (m3,) = a.receive_datagram("b", m2.data, 0.0)
    _, (c,) = b.receive_datagram("a", m3.data, 0.0)
    a.receive_datagram("b", c.data, 0.0)
    return a, b


def datagrams(size: int, n: int = 20000) -> None:
    payload = os.urandom(size)
    ours, base = [], []
    for _ in range(RUNS):
        a, b = _pair()
        peer = b.identity.node_id
        t = time.perf_counter()
        for _ in range(n):
            (d,) = a.seal_datagram(peer, payload, 1.0)
            b.receive_datagram("a", d.data, 1.0)
        ours.append(n / (time.perf_counter() - t))
        aead = ChaCha20Poly1305(os.urandom(32))
        t = time.perf_counter()
        for i in range(n):
            header = b"\x04\x00\x00\x00\x01" + i.to_bytes(8, "big")
            nonce = b"\x00\x00\x00\x00" + i.to_bytes(8, "little")
            ct = aead.encrypt(nonce, payload, header)
            aead.decrypt(nonce, ct, header)
        base.append(n / (time.perf_counter() - t))
    assert b.counters["datagrams_opened"] == n  # every datagram was authenticated and accepted
    print(f"datagram seal+open {size:5d} B: ours {_summary(ours)}; raw ChaCha20Poly1305 {_summary(base)}; {_ratio(ours, base)}")


def stream(size: int = 16384, n: int = 3000) -> None:
    payload = os.urandom(size)
    ours, base = [], []
    for _ in range(RUNS):
        a = StreamSession(ident("a"), PSK, admit_all, True)
        b = StreamSession(ident("b"), PSK, admit_all, False)
        (m2,) = [e.data for e in b.feed(a.start()) if isinstance(e, Outgoing)]
        (m3,) = [e.data for e in a.feed(m2) if isinstance(e, Outgoing)]
        b.feed(m3)
        t = time.perf_counter()
        for _ in range(n):
            b.feed(a.send(payload))
        ours.append(n / (time.perf_counter() - t))
        aead = ChaCha20Poly1305(os.urandom(32))
        t = time.perf_counter()
        for i in range(n):
            nonce = b"\x00\x00\x00\x00" + i.to_bytes(8, "little")
            aead.decrypt(nonce, aead.encrypt(nonce, payload, None), None)
        base.append(n / (time.perf_counter() - t))
    print(f"stream send+feed {size} B frames: ours {_summary(ours)}; raw ChaCha20Poly1305 {_summary(base)}; {_ratio(ours, base)}")


def handshakes(n: int = 300) -> None:
    ours, base = [], []
    me, other = ident("a"), ident("b")
    for run in range(RUNS):
        t = time.perf_counter()
        for i in range(n):
            a, b = transport("a", run * n + i), transport("b", 10**6 + i)
            (m1,) = a.connect("b", 0.0)
            _, (m2,) = b.receive_datagram("a", m1.data, 0.0)
            _, (m3,) = a.receive_datagram("b", m2.data, 0.0)
            _, (c,) = b.receive_datagram("a", m3.data, 0.0)
            a.receive_datagram("b", c.data, 0.0)
        ours.append(n / (time.perf_counter() - t))
        assert a.peers() == [b.identity.node_id]
        s_a = X25519PrivateKey.from_private_bytes(me.x25519_private_raw)
        s_b = X25519PrivateKey.from_private_bytes(other.x25519_private_raw)
        ed_a = Ed25519PublicKey.from_public_bytes(me.public.ed25519_public)
        ed_b = Ed25519PublicKey.from_public_bytes(other.public.ed25519_public)
        aead = ChaCha20Poly1305(os.urandom(32))
        nonce = bytes(12)
        t = time.perf_counter()
        for _ in range(n):
            e_a, e_b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
            pe_a, pe_b = e_a.public_key(), e_b.public_key()
            e_a.exchange(pe_b), e_b.exchange(pe_a)  # ee
            e_a.exchange(s_b.public_key()), s_b.exchange(pe_a)  # es
            s_a.exchange(pe_b), e_b.exchange(s_a.public_key())  # se
            ed_b.verify(other.public.binding_signature, BINDING_CONTEXT + other.public.x25519_public)
            ed_a.verify(me.public.binding_signature, BINDING_CONTEXT + me.public.x25519_public)
            for size in (5, 32, 101, 32, 101, 0):
                aead.decrypt(nonce, aead.encrypt(nonce, bytes(size), b"h" * 32), b"h" * 32)
        base.append(n / (time.perf_counter() - t))
    print(f"handshake (XXpsk0, 4 datagrams): ours {_summary(ours)}; raw X25519/Ed25519/ChaCha baseline {_summary(base)}; {_ratio(ours, base)}")


def ik_handshakes(n: int = 300) -> None:
    """IKpsk2 (2 datagrams + the initiator's keepalive) against XXpsk0 through the same core."""
    ik: list[float] = []
    xx: list[float] = []
    for run in range(RUNS):
        for rates, use_ik in ((ik, True), (xx, False)):
            t = time.perf_counter()
            for i in range(n):
                a, b = transport("a", run * n + i), transport("b", 10**6 + i)
                pub = b.identity.public
                if use_ik:
                    (m1,) = a.connect("b", 0.0, pub.node_id, expected_x25519=pub.x25519_public)
                    _, (m2,) = b.receive_datagram("a", m1.data, 0.0)
                    _, (k,) = a.receive_datagram("b", m2.data, 0.0)
                    b.receive_datagram("a", k.data, 0.0)
                else:
                    (m1,) = a.connect("b", 0.0, pub.node_id)
                    _, (m2,) = b.receive_datagram("a", m1.data, 0.0)
                    _, (m3,) = a.receive_datagram("b", m2.data, 0.0)
                    _, (c,) = b.receive_datagram("a", m3.data, 0.0)
                    a.receive_datagram("b", c.data, 0.0)
            rates.append(n / (time.perf_counter() - t))
            assert a.peers() == [pub.node_id] and b.peers() == [a.identity.node_id]
    print(f"handshake IKpsk2 (1 RTT): {_summary(ik)}; baseline XXpsk0 (1.5 RTT + confirmation) {_summary(xx)}; {_ratio(ik, xx)}")


def main() -> None:
    print(f"{RUNS} runs each; rates are operations per second on this machine (shared CPU)")
    for size in (64, 512, 1171):
        datagrams(size)
    stream()
    handshakes()
    ik_handshakes()


if __name__ == "__main__":
    main()
