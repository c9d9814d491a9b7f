#!/usr/bin/env bash
# `make demo`: start the local WebSocket echo server, run the example client
# against it, stop the server.
set -euo pipefail
python=$1; client=$2
dir=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp)
"$python" "$dir/servers/ws_server.py" --no-ipv6 >"$out" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.1; done
port=$("$python" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$out")
url="ws://127.0.0.1:$port/demo"
echo "demo: echo server listening at $url"
echo "demo: \$ $client $url 'Hello, WebSocket' 'Ünïcödé ✓'"
"$client" "$url" 'Hello, WebSocket' 'Ünïcödé ✓'
