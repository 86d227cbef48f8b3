#!/usr/bin/env bash
# Property-based API test: schemathesis generates requests for every operation of the
# committed OpenAPI document and sends them, authenticated, to a live `avatars dev`. Any 5xx
# or any response that contradicts the document fails the run.
#
# SCHEMATHESIS_MAX_EXAMPLES (default 10) bounds the cases per operation; SCHEMATHESIS_SEED
# makes a run repeatable.
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
if ! schemathesis --version 2>/dev/null | grep -q "$version"; then
  python3 -m pip install -q "schemathesis==$version"
fi

cargo build -q -p api --bin avatars
target_dir=${CARGO_TARGET_DIR:-target}
binary="$target_dir/debug/avatars"

work=$(mktemp -d)
# PostgreSQL runs as an unprivileged user when this script runs as root: it must reach its
# data directory.
chmod 755 "$work"
server=
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A private database (no DATABASE_URL) and data directory, thrown away afterwards. The key's
# request rate is lifted: the point is every operation's answers, not the 429 of the limiter
# (which has tests of its own).
env -u DATABASE_URL RUST_LOG=warn API_KEY_RATE_PER_SECOND=100000 API_KEY_RATE_BURST=100000 \
  "$binary" dev --bind "127.0.0.1:$port" --data-dir "$work/dev" \
  >"$work/dev.log" 2>&1 &
server=$!

key=
for _ in $(seq 1 600); do
  key=$(sed -n 's/^ *dev API key: *//p' "$work/dev.log" | head -n 1)
  if [ -n "$key" ] && curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$work/dev.log"
    echo "schemathesis: avatars dev exited" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$key" ]; then
  cat "$work/dev.log"
  echo "schemathesis: avatars dev did not become ready" >&2
  exit 1
fi

status=0
# An accepted `GET /events` is a stream that stays open until the client leaves: schemathesis
# reads each one until the request timeout, so the timeout is kept short (every other
# operation answers in well under a second).
document="$PWD/openapi/openapi.json"
# schemathesis keeps a cache in its working directory: keep it out of the tree.
cd "$work"
schemathesis run "$document" \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $key" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-10}" \
  ${SCHEMATHESIS_SEED:+--seed "$SCHEMATHESIS_SEED"} \
  --request-timeout 5 \
  --workers 1 \
  --no-color \
  --report-dir "$work/report" || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis: the service log follows" >&2
  tail -n 100 "$work/dev.log" >&2
fi
exit "$status"
