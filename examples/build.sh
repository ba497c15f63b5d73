#!/usr/bin/env bash
# Build every C source in examples/wasm/ into runtime/examples/NAME.wasm
# (shipped as package data). Sources whose first line mentions "reactor" or
# that are listed in REACTORS are built as WASI reactors (no main, exports only).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-clang}
SYSROOT=${WASI_SYSROOT:-/usr}
OUT=runtime/examples
REACTORS=" handler "
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
