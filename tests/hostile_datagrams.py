"""Valid membership datagrams and seeded byte-mutations of them (test_membership_hostile, bench_hostile)."""

from __future__ import annotations

import random

from mesh.coords import Coordinate
from mesh.membership import NodeMeta
from mesh.membership.messages import Ack, Alive, Dead, Gossip, IndirectPing, Ping, PushPullState, Suspect
from mesh.wire import encode, encode_broadcast


def base_datagrams() -> list[bytes]:
    """Valid datagrams as a peer ``b`` would send them to ``a``."""
    coord = Coordinate((0.001,) * 8, 0.4, 0.0001, 0.00002)
    return [
        encode("b", Ping(3, "a"), [encode_broadcast(Suspect(1, "n1", "b"))]),
        encode(
            "b",
            Gossip(),
            [
                encode_broadcast(Alive(4, "n4", "n4", NodeMeta(labels=(("k", "v"),)))),
                encode_broadcast(Dead(2, "n2", "b")),
            ],
        ),
        encode("b", Ack(9, PushPullState.pack_coord(coord)), [encode_broadcast(Suspect(5, "a", "b"))]),
        encode("b", IndirectPing(5, "n3", "n3", True), [encode_broadcast(Alive(1, "n3", "n3", NodeMeta()))]),
    ]


def mutated_datagrams(n: int, seed: int) -> list[bytes]:
    """``n`` base datagrams, each with 1-4 bytes overwritten at random (``random.Random(seed)``)."""
    rng = random.Random(seed)
    base = base_datagrams()
    out = []
    for _ in range(n):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out.append(bytes(data))
    return out
