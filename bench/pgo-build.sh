#!/usr/bin/env bash
# Builds weft with profile-guided optimisation: an instrumented build is run through
# the bench harness's scenarios (its own upstreams and load generator, HTTP/1.1, h2c,
# gRPC, TLS, direct answers, reloads, both io drivers) at 10 and 200 connections, and
# the profile it records steers the final build's inlining, block layout and branch
# order. The training points are deliberately not the ones bench/README.md quotes (50
# and 400 connections), so the figures measure a build trained on other traffic.
#
#   bench/pgo-build.sh            # -> target/pgo/weft (and target/pgo/weft.profdata)
#
# Needs llvm-profdata of rustc's own LLVM: the rustup component llvm-tools, installed
# here when missing. Takes 7-9 minutes on 2 cores (two whole-program LTO builds and a
# ~2 minute training run). `weft-bench run` picks up target/pgo/weft as the system
# `weft-io_uring-pgo`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools-preview
fi
if [ ! -x "$profdata" ]; then
  echo "pgo-build: no llvm-profdata at $profdata (rustup component llvm-tools)" >&2
  exit 1
fi

out=$root/target/pgo
rm -rf "$out/profiles" "$out/training"
mkdir -p "$out/profiles"

# --target keeps RUSTFLAGS off build scripts and proc macros: only weft is instrumented.
cargo build --release -p weft-bench
RUSTFLAGS="-Cprofile-generate=$out/profiles" \
  cargo build --release -p weft-gateway --bin weft --target "$host" --target-dir target/pgo-generate

# Every weft the harness starts writes its profile when SIGTERM ends it. Errors in a
# training run (a peer missing, a point the 2-core machine cannot sustain) do not
# spoil the profile, so they are reported, not fatal.
if ! target/release/weft-bench run \
  --weft-bin "target/pgo-generate/$host/release/weft" \
  --system weft-io_uring --system weft-epoll \
  --rounds 1 --duration 1 --connections 10,200 --idle-connections 1000 \
  --out "$out/training" >"$out/training.log" 2>&1; then
  echo "pgo-build: the training run recorded errors (see $out/training.log); using its profile" >&2
fi
if ! compgen -G "$out/profiles/*.profraw" >/dev/null; then
  echo "pgo-build: the training run left no profile in $out/profiles" >&2
  exit 1
fi
"$profdata" merge -o "$out/weft.profdata" "$out/profiles"

RUSTFLAGS="-Cprofile-use=$out/weft.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
  cargo build --release -p weft-gateway --bin weft --target "$host" --target-dir target/pgo-use
cp "target/pgo-use/$host/release/weft" "$out/weft"
echo "pgo-build: $out/weft"
