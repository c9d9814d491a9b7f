#!/usr/bin/env bash
# pjlib mode: libpjwebsock driven by a real pjlib ioqueue and timer heap.
#
#   PJPROJECT_DIR=/path/to/built/pjproject bash tests/pjlib/run.sh
#
# PJPROJECT_DIR is a pjproject source tree built in place (pjlib and
# pjlib-util; static or shared, select or epoll ioqueue). Without it (and
# without `pkg-config libpjproject`) the suite is skipped, visibly.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/build/pjlib-test
py=${PYTHON:-$root/.venv/bin/python}
cflags=(-DPJ_AUTOCONF=1 -DPJ_IS_BIG_ENDIAN=0 -DPJ_IS_LITTLE_ENDIAN=1)
if [ -n "${PJPROJECT_DIR:-}" ]; then
    pj=$PJPROJECT_DIR
    cflags+=(-I"$pj/pjlib/include" -I"$pj/pjlib-util/include")
    if ls "$pj"/pjlib/lib/libpj.so >/dev/null 2>&1; then
        libs=(-L"$pj/pjlib-util/lib" -L"$pj/pjlib/lib" -lpjlib-util -lpj
              -Wl,-rpath,"$pj/pjlib/lib:$pj/pjlib-util/lib")
    else
        libs=("$pj"/pjlib-util/lib/libpjlib-util-*.a "$pj"/pjlib/lib/libpj-*.a)
    fi
    libs+=(-luuid -lm -lpthread)
elif pkg-config --exists libpjproject 2>/dev/null; then
    cflags=($(pkg-config --cflags libpjproject))
    libs=($(pkg-config --libs libpjproject))
else
    echo "SKIPPED: pjproject not found (set PJPROJECT_DIR to a built pjproject tree)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
mkdir -p "$out"
# -lpjwebsock ahead of pjlib-util, as a PJSIP application links it.
cc -std=gnu11 -O1 -g -Wall -Wextra -Werror "${cflags[@]}" -I"$root/include" \
    -o "$out/test_pjlib_driver" "$root/tests/pjlib/test_pjlib_driver.c" \
    -L"$root/build/lib" -lpjwebsock -Wl,-rpath,"$root/build/lib" "${libs[@]}" || {
    echo "0 passed, 1 failed, 0 skipped"; exit 1; }
"$py" "$root/tests/servers/ws_server.py" > "$out/server.json" 2> "$out/server.log" &
srv=$!
trap 'kill $srv 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$out/server.json" ] && break; sleep 0.1; done
port=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['port'])" "$out/server.json")
ulimit -n 4096 2>/dev/null
timeout 300 "$out/test_pjlib_driver" "ws://127.0.0.1:$port"
