"""Hand-written direct-ABI test modules (WAT) that count every call the host makes into them.

Each exported function adds one to the exported mutable global ``calls``, which the
host reads without calling into wasm. ``handle`` answers the input with every byte
XOR 0x20 (ASCII case flipped), written to a guest-owned output buffer it reuses
across calls. Inputs starting with ``!`` make ``handle`` return -5, with ``#`` trap
(unreachable), with ``%`` claim an output of 0x7fffffff bytes. Memory comes from a
bump allocator that grows linear memory on demand and never reuses freed bytes.
"""

from __future__ import annotations

from wasmtime import wat2wasm

_TEMPLATE = """
(module
  (memory (export "memory") 1)
  (global $calls (export "calls") (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (global $out (mut i32) (i32.const 0))
  (global $out_cap (mut i32) (i32.const 0))
  (func $count (global.set $calls (i32.add (global.get $calls) (i32.const 1))))
  (func $bump (param $n i32) (result i32) (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then (if (i32.lt_s (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have))
                                                            (i32.const 65535)) (i32.const 16)))
                          (i32.const 0))
              (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "alloc") (param $n i32) (result i32) (call $count) (call $bump (local.get $n)))
  (func (export "dealloc") (param i32 i32) (call $count))
  {version}
  (func (export "handle") (param $in i32) (param $len i32) (result i64) (local $i i32) (local $c i32)
    (call $count)
    (if (i32.gt_u (local.get $len) (i32.const 0))
      (then
        (local.set $c (i32.load8_u (local.get $in)))
        (if (i32.eq (local.get $c) (i32.const 33)) (then (return (i64.const -5))))
        (if (i32.eq (local.get $c) (i32.const 35)) (then (unreachable)))
        (if (i32.eq (local.get $c) (i32.const 37)) (then (return (i64.const 0x7fffffff))))))
    (if (i32.gt_u (local.get $len) (global.get $out_cap))
      (then (global.set $out (call $bump (local.get $len))) (global.set $out_cap (local.get $len))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (i32.store8 (i32.add (global.get $out) (local.get $i))
                  (i32.xor (i32.load8_u (i32.add (local.get $in) (local.get $i))) (i32.const 32)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i64.or (i64.shl (i64.extend_i32_u (global.get $out)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
)
"""


def counting_module(version: int | None) -> bytes:
    """The counting handler: ``version`` None is the version-1 contract (no ``wmx_abi_version`` export)."""
    export = "" if version is None else (
        f'(func (export "wmx_abi_version") (result i32) (call $count) (i32.const {version}))'
    )
    return wat2wasm(_TEMPLATE.replace("{version}", export))


_GATED = """
(module
  (import "wasmatrix" "kv_get" (func $kv_get (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "nk")
  (func (export "wmx_abi_version") (result i32) (i32.const 2))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param $in i32) (param $len i32) (result i64) (local $c i32)
    (if (i32.gt_u (local.get $len) (i32.const 0))
      (then
        (local.set $c (i32.load8_u (local.get $in)))
        (if (i32.or (i32.eq (local.get $c) (i32.const 119)) (i32.eq (local.get $c) (i32.const 115)))
          (then (drop (call $kv_get (i32.const 16) (i32.const 1) (i32.const 17) (i32.const 1)
                                    (i32.const 32) (i32.const 16)))))
        (if (i32.eq (local.get $c) (i32.const 115)) (then (loop $spin (br $spin))))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $in)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
)
"""


def gated_module() -> bytes:
    """A version-2 echo handler: input ``w...`` first reads KV key ``k`` of namespace ``n`` (a test's gated
    store parks it there), ``s...`` reads it and then spins until the epoch deadline; anything else is
    echoed at once."""
    return wat2wasm(_GATED)
