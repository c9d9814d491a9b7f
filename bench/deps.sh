#!/usr/bin/env bash
# Installs what the benchmarks need when it is missing (Debian/Ubuntu):
# libwebsockets-dev and pkg-config (peer client), openssl (wss:// test
# certificate); with "bench": also valgrind (instruction counts) and
# libboost-dev (Boost.Beast peer client, header-only).
set -euo pipefail
mode=${1:-smoke}
missing=()
pkg-config --exists libwebsockets 2>/dev/null || missing+=(libwebsockets-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v openssl >/dev/null || missing+=(openssl)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
command -v taskset >/dev/null || missing+=(util-linux)
if [ "$mode" = bench ]; then
  command -v valgrind >/dev/null || missing+=(valgrind)
  [ -f /usr/include/boost/beast.hpp ] || missing+=(libboost-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench/deps.sh: installing ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
