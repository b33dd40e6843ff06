#!/usr/bin/env bash
# Packs what `weft-bench run` needs into DIR for a machine with no package registry:
# stripped weft and weft-bench release builds, nginx, haproxy, h2load, and the shared
# libraries those three use beyond the C runtime. On the target:
#   PATH=DIR/bin:$PATH LD_LIBRARY_PATH=DIR/lib weft-bench run ...
# (as root there, `mkdir -p /var/lib/nginx /var/log/nginx` first: Debian's nginx wants them).
set -euo pipefail
dir=${1:?usage: bench/pack-offline.sh DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir/bin" "$dir/lib"
for b in weft weft-bench; do
  strip -o "$dir/bin/$b" "$root/target/release/$b"
done
for p in nginx haproxy h2load; do
  path=$(command -v "$p" || true)
  [ -z "$path" ] && [ -x "/usr/sbin/$p" ] && path=/usr/sbin/$p
  [ -z "$path" ] && { echo "$p not installed, left out" >&2; continue; }
  cp "$path" "$dir/bin/"
  # Everything it links but the C runtime and the C++/gcc support the target has.
  ldd "$path" | awk '$3 ~ /^\// {print $3}' |
    grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so' |
    while read -r lib; do cp -L "$lib" "$dir/lib/"; done
done
du -sh "$dir"
