#!/bin/bash
# Instructions per proxied request, counted by valgrind (callgrind's Ir): a figure no
# noisy neighbour moves, for A/B comparisons finer than wall-clock CPU allows on a
# shared VM (where one pair of runs can differ by 30%).
#
#   bench/instructions.sh BIN MODE [N]
#
# MODE: h1 (HTTP/1.1 client and upstream), h2 (h2c client, HTTP/1.1 upstream), h2h2
# (h2c on both sides). One worker on epoll (valgrind does not follow io_uring), 10
# connections (x 10 streams for h2) driven by h2load, to `weft-bench upstream`.
# Prints the instructions of a run of 2N requests divided by 2N (startup, a few
# hundred thousand instructions, is under 0.5% of it). Repeat and take medians: runs
# of the same binary differ by about 1% (how many requests each event-loop turn finds
# depends on timing).
#
# WEFT_CLUSTER_EXTRA: config lines appended to the cluster (its keys, then its
# sub-tables), e.g. the endpoint-health features for an A/B of their cost.
# WEFT_ROUTE_EXTRA: keys added to the route (e.g. a retry policy and a rate limit).
#
# Needs valgrind, h2load (nghttp2-client) and a built weft-bench next to this script's
# repository (target/release/weft-bench).
set -euo pipefail
BIN=$1
MODE=$2
N=${3:-3000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${WEFT_BENCH:-$ROOT/target/release/weft-bench}
DIR=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
ADMIN=$((PORT + 1))
UP=$((PORT + 2))
"$BENCH" upstream --listen 127.0.0.1:$UP >/dev/null 2>&1 &
UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null; rm -rf "$DIR"' EXIT
PROTOCOL=""
[ "$MODE" = h2h2 ] && PROTOCOL='protocol = "http2"'
cat >"$DIR/weft.toml" <<EOT
[admin]
address = "127.0.0.1:$ADMIN"
[runtime]
workers = 1
io = "epoll"
[[listeners]]
name = "l"
address = "127.0.0.1:$PORT"
[[listeners.routes]]
match = { path_prefix = "/" }
cluster = "up"
${WEFT_ROUTE_EXTRA:-}
[clusters.up]
endpoints = ["127.0.0.1:$UP"]
$PROTOCOL
${WEFT_CLUSTER_EXTRA:-}
EOT
COUNT=$((2 * N))
WEFT_LOG=error valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
    "$BIN" ingress --config "$DIR/weft.toml" >/dev/null 2>"$DIR/valgrind.log" &
WEFT=$!
for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$ADMIN/ready" && break
    sleep 0.1
done
if [ "$MODE" = h1 ]; then
    h2load --h1 -n $COUNT -c 10 "http://127.0.0.1:$PORT/" >"$DIR/load.log" 2>&1
else
    h2load -n $COUNT -c 10 -m 10 "http://127.0.0.1:$PORT/" >"$DIR/load.log" 2>&1
fi
grep -q "$COUNT succeeded" "$DIR/load.log" || { echo "load failed:"; cat "$DIR/load.log"; exit 1; }
# Two signals: drain, then stop at once.
kill -INT $WEFT
sleep 0.3
kill -INT $WEFT 2>/dev/null || true
wait $WEFT 2>/dev/null || true
IR=$(grep -E '^summary:' "$DIR/cg.out" | awk '{print $2}')
echo "$BIN $MODE: $((IR / COUNT)) instructions per request ($IR over $COUNT requests)"
