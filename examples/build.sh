#!/usr/bin/env bash
# Build every C source in examples/wasm/ into runtime/examples/NAME.wasm
# (shipped as package data). Sources whose first line mentions "reactor" or
# that are listed in REACTORS are built as WASI reactors (no main, exports only).
# Every Rust source (examples/wasm/*.rs) is built as a WASI command when rustc
# and a wasm32 WASI std are installed (Debian: rustc libstd-rust-dev-wasm32,
# whose target is wasm32-wasi; newer rustc calls it wasm32-wasip1).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-clang}
SYSROOT=${WASI_SYSROOT:-/usr}
OUT=runtime/examples
REACTORS=" handler httpecho "
mkdir -p "$OUT"
for src in examples/wasm/*.c; do
  name=$(basename "$src" .c)
  flags=(--target=wasm32-wasi --sysroot="$SYSROOT" -O2 -Wall -Werror -Iexamples/wasm -Wl,--strip-all)
  if [[ "$REACTORS" == *" $name "* ]]; then
    flags+=(-mexec-model=reactor)
  fi
  "$CC" "${flags[@]}" "$src" -o "$OUT/$name.wasm"
  echo "built $OUT/$name.wasm ($(wc -c <"$OUT/$name.wasm") bytes)"
done

# The first rustc (RUSTC, else the one on PATH, else Debian's /usr/bin/rustc: a rustup toolchain
# earlier on PATH often lacks the wasm std) with a wasm32 WASI std installed.
rust_target=""
for cand in ${RUSTC:-} rustc /usr/bin/rustc; do
  command -v "$cand" >/dev/null 2>&1 || continue
  for t in wasm32-wasi wasm32-wasip1; do
    libdir=$("$cand" --print target-libdir --target "$t" 2>/dev/null || true)
    if [ -n "$libdir" ] && compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
      RUSTC=$cand
      rust_target=$t
      break 2
    fi
  done
done
for src in examples/wasm/*.rs; do
  [ -e "$src" ] || continue
  name=$(basename "$src" .rs)
  if [ -z "$rust_target" ]; then
    echo "skipped $src: no rustc with a wasm32-wasi(p1) std (apt-get install rustc libstd-rust-dev-wasm32)" >&2
    continue
  fi
  "$RUSTC" --target "$rust_target" -O -C strip=symbols --edition 2021 "$src" -o "$OUT/$name.wasm"
  echo "built $OUT/$name.wasm ($(wc -c <"$OUT/$name.wasm") bytes, $rust_target)"
done
