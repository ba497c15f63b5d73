"""Named timing profiles, after memberlist's DefaultLAN/WAN/LocalConfig.

Every timer of the membership protocol derives from one of these fields. The
defaults and the reasons for them:

``probe_interval``
    T in the SWIM paper: one node is probed per interval. Failure detection time
    and per-node load both scale with it (one ping + one ack per T).
``probe_timeout``
    How long to wait for a direct ack before asking k peers to probe indirectly.
    Must exceed the 99th percentile RTT of the network, or healthy nodes get
    indirect probes (extra load) and, with loss, suspicions.
``indirect_checks``
    k: peers asked to probe a silent target. More peers tolerate more loss on the
    path between prober and target at the cost of k extra pings per failure.
``retransmit_mult``
    A gossip update is sent ``retransmit_mult * ceil(log10(N + 1))`` times
    (memberlist's formula), enough for epidemic spread to reach all N nodes with
    high probability while keeping the per-update cost logarithmic.
``suspicion_mult`` / ``suspicion_max_timeout_mult``
    Lifeguard: a suspected node has ``suspicion_mult * max(1, log10(N)) * T`` at
    least and ``suspicion_max_timeout_mult`` times that at most to refute; the
    timeout starts at the maximum and shrinks towards the minimum as independent
    confirmations arrive, so true failures are confirmed fast while a lone slow
    prober cannot kill a healthy node quickly.
``gossip_interval`` / ``gossip_nodes``
    Besides piggybacking on probes, pending updates are pushed to this many random
    peers this often: dissemination in O(log N) rounds independent of T.
``gossip_to_the_dead_time``
    Dead nodes still receive gossip this long, so a falsely declared node learns
    of it quickly and refutes.
``push_pull_interval``
    Full state exchange with one random peer over a stream, repairing anything
    gossip missed. Scaled with cluster size (memberlist's pushPullScale) so the
    total state-transfer load stays bounded as N grows.
``awareness_max_multiplier``
    Lifeguard local health: a node that misses nacks or must refute suspicions
    assumes *it* is slow, and stretches its probe interval and timeout by up to
    this factor instead of accusing healthy peers.
``dead_node_reclaim_time``
    After this long, a different address may reclaim a dead node's name (a node
    restarted on a new address). 0 disables reclaim by a new address.
``reconnect_interval``
    As in Serf: this often, with probability failed/alive, push-pull with a random
    *dead* (not left) member. That is how two halves of a healed partition, each
    having declared the other dead, find each other again.
``tombstone_time``
    Dead and left members are remembered this long (their incarnation protects
    against resurrection by stale gossip), then forgotten: removed from the
    member table, the gossip-to-the-dead set, the coordinates, everything.
``incarnation_window``
    The largest jump an update may make over the incarnation we hold for its
    subject (our own included). An update beyond it is refused and counted
    (``incarnation_jumps``) instead of acted on, so one crafted ``Suspect`` at
    2**63-1 cannot push a node to an incarnation no decoder accepts, and reaching
    the wire limit takes 2**31 accepted accusations. The default, 2**32, is more
    refutes and metadata updates than a node makes in a century at one a second,
    so a restarted node that lost its incarnation still refutes its tombstone. A
    member we have never heard of is taken at any incarnation the wire allows (a
    long-lived mesh has large ones).
``max_members``
    The most members (every state, this node and tombstones included) a node
    holds. A member never seen before is refused beyond it and counted
    (``members_refused_full``); members already held still update, and reaping
    tombstones frees room. The default, 100,000, is ten times the largest mesh
    simulated (bench/bench_sim.py's 10,000 nodes) and keeps a full table near
    15 MB; push-pull ships any table in frames of at most ``MAX_FRAME`` bytes.
``max_new_members_per_push_pull``
    The most members never seen before that one push-pull message (one frame,
    or one :meth:`SwimCore.merge_states` call) may add; the rest of its new
    entries are refused and counted (``members_refused_rate``). 10,000: a node's
    frames carry at most 625 entries each (``_PP_FRAME_BUDGET`` over 96 bytes),
    so this binds only in-process merges and hand-made frames.
``max_new_members_per_peer``
    A token bucket per sending node, refilled continuously: members never seen
    before that one peer may introduce (gossip and push-pull together) are at
    most this many at once and this many per ``push_pull_interval`` after that;
    the rest are refused and counted (``members_refused_rate``) and come back
    through later push-pulls or other peers. 20,000: a node joining a mesh of up
    to 20,000 learns it from its seed in one push-pull; a larger mesh takes one
    more push-pull per 20,000 members. One peer then injects at most 20,000
    ghosts per interval (667 a second with the lan profile), and the table never
    exceeds ``max_members`` whatever the number of peers.

Relations :meth:`MembershipConfig.validate` enforces (each guards against a
crash, a timer loop that never advances, or a setting that silently does nothing):

* every duration is a finite number; intervals and timeouts are > 0, and
  ``gossip_to_the_dead_time`` and ``dead_node_reclaim_time`` are >= 0;
* ``probe_timeout < probe_interval``: the indirect probes and their nacks need
  the rest of the interval;
* ``tombstone_time >= gossip_to_the_dead_time``: a reaped member must not still
  be a gossip target (that crashed ``tick`` with a ``KeyError``);
* ``tombstone_time >= dead_node_reclaim_time``: otherwise a tombstone is gone
  before a new address may reclaim it, and the setting means nothing;
* ``tombstone_time >= reconnect_interval``: dead members must live long enough
  for the reconnect timer to try them, or healed partitions never re-merge;
* ``gossip_nodes``, ``retransmit_mult``, ``suspicion_mult``,
  ``suspicion_max_timeout_mult``, ``awareness_max_multiplier`` and
  ``incarnation_window`` (<= 2**62) are integers >= 1; ``indirect_checks`` >= 0;
* ``max_members`` >= 2 (this node and one peer), ``max_new_members_per_push_pull``
  >= 1 and ``max_new_members_per_peer`` >= ``max_new_members_per_push_pull``
  (a larger per-message bound could never be used), all integers.

Member names (checked wherever a member can appear: decoding, push-pull entries,
bootstrap lists, the local node's own name) are 1 to 128 characters from
``A-Z a-z 0-9`` and ``. _ - : @ +`` (``mesh.wire.NAME_PATTERN``); addresses are 1
to 256 printable ASCII characters without spaces. Nothing else is ever stored,
so a name never carries a control character into a log line, a table or a document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mesh.errors import ConfigError


@dataclass(slots=True, frozen=True)
class MembershipConfig:
    """Timing and fan-out parameters of the SWIM/Lifeguard protocol (seconds)."""

    name: str = "lan"
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    dead_node_reclaim_time: float = 0.0
    reconnect_interval: float = 10.0
    tombstone_time: float = 3600.0
    stream_timeout: float = 10.0
    incarnation_window: int = 2**32
    max_members: int = 100_000
    max_new_members_per_push_pull: int = 10_000
    max_new_members_per_peer: int = 20_000

    def with_overrides(self, **kwargs: float | int) -> "MembershipConfig":
        """Return a copy with the given fields replaced (validated)."""
        unknown = sorted(set(kwargs) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown membership setting(s): {', '.join(unknown)}")
        cfg = replace(self, **kwargs)  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError if the settings cannot work together (relations in the module docstring)."""
        for f in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval", "reconnect_interval",
                  "tombstone_time", "stream_timeout", "gossip_to_the_dead_time", "dead_node_reclaim_time"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{f} must be a finite number of seconds, got {v!r}")
        for f in ("indirect_checks", "retransmit_mult", "suspicion_mult", "suspicion_max_timeout_mult",
                  "gossip_nodes", "awareness_max_multiplier", "incarnation_window",
                  "max_members", "max_new_members_per_push_pull", "max_new_members_per_peer"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{f} must be an integer, got {v!r}")
        for f in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval", "reconnect_interval",
                  "tombstone_time", "stream_timeout"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"{f} must be positive")
        if self.gossip_to_the_dead_time < 0 or self.dead_node_reclaim_time < 0:
            raise ConfigError("gossip_to_the_dead_time and dead_node_reclaim_time must be >= 0")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("probe_timeout must be shorter than probe_interval (indirect probes need time)")
        if self.indirect_checks < 0 or self.gossip_nodes < 1 or self.retransmit_mult < 1:
            raise ConfigError("indirect_checks >= 0, gossip_nodes >= 1 and retransmit_mult >= 1 are required")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ConfigError("suspicion multipliers must be >= 1")
        if self.awareness_max_multiplier < 1:
            raise ConfigError("awareness_max_multiplier must be >= 1")
        if not 1 <= self.incarnation_window <= 2**62:
            raise ConfigError("incarnation_window must be in [1, 2**62]")
        if self.max_members < 2:
            raise ConfigError("max_members must be >= 2 (this node and one peer)")
        if self.max_new_members_per_push_pull < 1:
            raise ConfigError("max_new_members_per_push_pull must be >= 1")
        if self.max_new_members_per_peer < self.max_new_members_per_push_pull:
            raise ConfigError(
                f"max_new_members_per_peer ({self.max_new_members_per_peer}) must be >= "
                f"max_new_members_per_push_pull ({self.max_new_members_per_push_pull}): one peer's push-pull "
                "could never use the larger per-message bound"
            )
        if self.tombstone_time < self.gossip_to_the_dead_time:
            raise ConfigError(
                f"tombstone_time ({self.tombstone_time}) must be >= gossip_to_the_dead_time "
                f"({self.gossip_to_the_dead_time}): a forgotten member cannot still receive gossip"
            )
        if self.tombstone_time < self.dead_node_reclaim_time:
            raise ConfigError(
                f"tombstone_time ({self.tombstone_time}) must be >= dead_node_reclaim_time "
                f"({self.dead_node_reclaim_time}): a tombstone must outlive the reclaim wait"
            )
        if self.tombstone_time < self.reconnect_interval:
            raise ConfigError(
                f"tombstone_time ({self.tombstone_time}) must be >= reconnect_interval "
                f"({self.reconnect_interval}): dead members must live until a reconnect can try them"
            )

    def retransmit_limit(self, n: int) -> int:
        """How many times one update is transmitted in a cluster of n nodes."""
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def suspicion_timeouts(self, n: int) -> tuple[float, float]:
        """(min, max) Lifeguard suspicion timeout for a cluster of n nodes."""
        node_scale = max(1.0, math.log10(max(1, n)))
        lo = self.suspicion_mult * node_scale * self.probe_interval
        return lo, lo * self.suspicion_max_timeout_mult

    def push_pull_period(self, n: int) -> float:
        """Push-pull interval scaled for n nodes (memberlist's pushPullScale)."""
        threshold = 32
        if n <= threshold:
            return self.push_pull_interval
        mult = math.ceil(math.log2(n) - math.log2(threshold)) + 1
        return self.push_pull_interval * mult


# memberlist DefaultLANConfig: a data-centre LAN, sub-millisecond RTTs.
LAN = MembershipConfig()

# memberlist DefaultWANConfig: RTTs of hundreds of ms, more loss; slower probing and
# more patience so failure detection does not fire on congestion.
WAN = MembershipConfig(
    name="wan",
    probe_interval=5.0,
    probe_timeout=3.0,
    suspicion_mult=6,
    gossip_interval=0.5,
    gossip_nodes=4,
    gossip_to_the_dead_time=60.0,
    push_pull_interval=60.0,
    reconnect_interval=30.0,
    stream_timeout=30.0,
)

# memberlist DefaultLocalConfig: one host or a loopback test; fast everything.
LOCAL = MembershipConfig(
    name="local",
    probe_interval=1.0,
    probe_timeout=0.2,
    indirect_checks=1,
    retransmit_mult=2,
    suspicion_mult=3,
    gossip_interval=0.1,
    gossip_to_the_dead_time=15.0,
    push_pull_interval=15.0,
    stream_timeout=1.0,
)

# Vehicles on cellular links: RTTs of 50–500 ms with bursts of loss and brief
# coverage gaps. A 2 s interval halves probe traffic on metered links, the 1.2 s
# timeout rides out cellular jitter, and the high suspicion multiplier lets a node
# in a tunnel refute before it is declared dead.
VEHICLE = MembershipConfig(
    name="vehicle",
    probe_interval=2.0,
    probe_timeout=1.2,
    indirect_checks=4,
    retransmit_mult=4,
    suspicion_mult=6,
    gossip_interval=0.4,
    gossip_nodes=3,
    gossip_to_the_dead_time=60.0,
    push_pull_interval=60.0,
    dead_node_reclaim_time=60.0,
    reconnect_interval=20.0,
    stream_timeout=20.0,
)

# The daemon's default: edge devices on one LAN or metro network. memberlist's LAN numbers date
# from data-centre clusters where a 5-7 s detection is fine; a fleet that fails over workloads
# wants it twice as fast. Probing twice as often (0.5 s, timeout 0.25 s - still 100x a LAN RTT)
# halves every term of the detection time; Lifeguard (local health, confirmations, refutation
# ahead of the backlog) is what keeps false positives at zero under 10% loss
# (bench/bench_serf.py --loss 0.1, tests/test_daemon_faults.py). Costs twice lan's probe traffic.
EDGE = MembershipConfig(
    name="edge",
    probe_interval=0.4,
    probe_timeout=0.2,
    gossip_interval=0.1,
    stream_timeout=5.0,
)

PROFILES: dict[str, MembershipConfig] = {c.name: c for c in (LAN, WAN, LOCAL, VEHICLE, EDGE)}


def profile(name: str) -> MembershipConfig:
    """Return a named profile (lan, wan, local, vehicle)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}") from None
