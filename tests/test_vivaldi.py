"""Vivaldi coordinates converge on a synthetic RTT matrix (points in a plane + access-link heights)."""

from __future__ import annotations

import math
import random
import statistics

from mesh.coords import Coordinate, VivaldiClient


def _synthetic(n: int, seed: int) -> list[list[float]]:
    r = random.Random(seed)
    pts = [(r.uniform(0, 0.1), r.uniform(0, 0.1)) for _ in range(n)]  # up to ~140 ms across
    heights = [r.uniform(0.001, 0.005) for _ in range(n)]
    return [
        [math.dist(pts[i], pts[j]) + heights[i] + heights[j] if i != j else 0.0 for j in range(n)] for i in range(n)
    ]


def _relative_errors(clients: list[VivaldiClient], rtt: list[list[float]]) -> list[float]:
    n = len(clients)
    return [
        abs(clients[i].coord.distance(clients[j].coord) - rtt[i][j]) / rtt[i][j]
        for i in range(n)
        for j in range(n)
        if i != j
    ]


def test_vivaldi_converges_on_synthetic_matrix() -> None:
    n = 40
    rtt = _synthetic(n, 7)
    rng = random.Random(3)
    clients = [VivaldiClient(random.Random(i)) for i in range(n)]
    before = statistics.median(_relative_errors(clients, rtt))
    for _ in range(200):
        for i in range(n):
            j = rng.randrange(n - 1)
            j += j >= i
            noisy = rtt[i][j] * rng.uniform(0.95, 1.05)
            clients[i].update(f"n{j}", clients[j].coord, noisy)
    errors = _relative_errors(clients, rtt)
    after = statistics.median(errors)
    assert before > 0.9  # everyone at the origin: estimates are nowhere near
    assert after < 0.15, f"median relative error {after:.3f}"
    # each node's own error estimate has come down from the maximum
    assert statistics.median(c.coord.error for c in clients) < 0.5


def test_latency_filter_rejects_a_single_outlier() -> None:
    a, b = VivaldiClient(random.Random(1)), VivaldiClient(random.Random(2))
    for _ in range(50):
        a.update("b", b.coord, 0.020)
        b.update("a", a.coord, 0.020)
    est = a.coord.distance(b.coord)
    a.update("b", b.coord, 5.0)  # one wild sample: the median-of-3 filter ignores it
    assert abs(a.coord.distance(b.coord) - est) < 0.005


def test_invalid_samples_are_ignored() -> None:
    a = VivaldiClient(random.Random(1))
    start = a.coord
    bad = Coordinate((float("nan"),) * 8, 1.0, 0.0, 0.0)
    assert a.update("x", bad, 0.01) == start
    assert a.update("x", Coordinate((0.0,) * 3, 1.0, 0.0, 0.0), 0.01) == start  # wrong dimensionality
    assert a.update("x", Coordinate.origin(a.config), -1.0) == start
    assert a.updates == 0


def test_coincident_points_are_separated_deterministically() -> None:
    def run() -> tuple[float, ...]:
        a, b = VivaldiClient(random.Random(5)), VivaldiClient(random.Random(6))
        for _ in range(10):
            a.update("b", b.coord, 0.01)
            b.update("a", a.coord, 0.01)
        return a.coord.vec

    assert run() == run()
    assert any(abs(x) > 0 for x in run())


def test_latency_filter_is_the_median_of_the_last_size_samples() -> None:
    """For every filter size, the filtered RTT is the median (upper for even counts, as
    Serf) of the last ``latency_filter_size`` samples towards that node, forgotten on forget().
    (Sizes >= 4 kept too few samples before: a negative slice start dropped the older ones.)"""
    from mesh.coords import VivaldiConfig

    r = random.Random(1)
    for size in range(1, 7):
        v = VivaldiClient(random.Random(0), VivaldiConfig(latency_filter_size=size))
        hist: dict[str, list[float]] = {}
        for _ in range(3000):
            node = f"n{r.randrange(20)}"
            if r.random() < 0.03:
                v.forget(node)
                hist.pop(node, None)
                continue
            x = r.uniform(0.001, 0.2)
            h = hist.setdefault(node, [])
            h.append(x)
            last = sorted(h[-size:])
            assert v._filtered(node, x) == last[len(last) // 2]


def test_packed_table_behaves_like_a_dict_of_bytes() -> None:
    """Own numbering (numbers reused) and a numbering shared by several tables (the simulator's)."""
    from mesh.coords import PackedTable

    shared: dict[str, int] = {}
    PackedTable(12, shared)["z"] = bytes(12)  # another table numbered a name first
    for t in (PackedTable(12), PackedTable(12, shared)):
        _check_packed_table(t)


def _check_packed_table(t: object) -> None:
    r = random.Random(2)
    ref: dict[str, bytes] = {}
    for _ in range(5000):
        k = f"k{r.randrange(50)}"
        op = r.random()
        if op < 0.5:
            v = bytes(r.randrange(256) for _ in range(12 if r.random() < 0.9 else r.choice([0, 5, 44])))
            t[k] = v  # type: ignore[index]
            ref[k] = v
        elif op < 0.7:
            assert t.pop(k, None) == ref.pop(k, None)  # type: ignore[attr-defined]
        else:
            assert t.get(k) == ref.get(k)  # type: ignore[attr-defined]
            assert (k in t) == (k in ref)  # type: ignore[operator]
        assert len(t) == len(ref)  # type: ignore[arg-type]
    assert sorted(t) == sorted(ref)  # type: ignore[call-overload]
    assert all(type(t[k]) is bytes and t[k] == v for k, v in ref.items())  # type: ignore[index]


def test_packed_table_pack_into_writes_like_setitem() -> None:
    import struct

    from mesh.coords import PackedTable

    st = struct.Struct("<2d")
    t = PackedTable(16)
    changed: list[str] = []
    t.on_change = changed.append
    t.pack_into("a", st, 1.0, 2.0)  # a new key: added, reported
    assert t["a"] == struct.pack("<2d", 1.0, 2.0) and changed == ["a"]
    t.pack_into("a", st, 3.0, 4.0)  # overwritten in place: no change reported
    assert t.unpacked("a", st) == (3.0, 4.0) and changed == ["a"] and len(t) == 1
    t["b"] = b"odd"  # a value of another width, kept aside
    t.pack_into("b", st, 5.0, 6.0)
    assert t.get("b") == struct.pack("<2d", 5.0, 6.0) and len(t) == 2
