#!/usr/bin/env python3
"""WebSocket test peer for libpjwebsock's C tests and examples.

A real RFC 6455 server built on the `websockets` package (asyncio). It binds
127.0.0.1 (and ::1 when the host has IPv6 loopback) on ephemeral ports and
prints one JSON line on stdout once it listens:

    {"port": 40123, "port6": 40124}        (port6 is null without ::1)

The behaviour of each connection is chosen by the request path (the query
string holds the parameters):

  (any other path)     echo every message with the same type, in order.
  /info                first send one text message, JSON:
                       {"path", "query", "headers": [[name, value], ...]
                       (every request header, in order, as received),
                       "subprotocol": negotiated one or null}; then echo.
                       Any path whose query contains info=1 does the same.
  /close?code=4001&reason=bye[&after=1]
                       close with that code/reason right after the
                       handshake (after the first message with after=1).
  /pause?ms=3000       stop reading the socket for ms milliseconds, so that
                       the client's writes back up; then echo.
  /silent              never read, never answer (a dead peer). The TCP
                       connection stays open until the client closes it.
  /drop[?after=1][&rst=1]
                       close TCP without a close frame right after the
                       handshake (after the first message with after=1);
                       rst=1 forces a RST instead of a FIN.
  /bigreply?n=N        send one binary message of N bytes, byte i being
                       (i*7) % 251, then echo.
  /flood?size=S[&count=C]
                       send binary messages of S bytes (the first 8 bytes a
                       big-endian sequence number, the rest the pattern)
                       as fast as the client reads, C of them (0 or absent:
                       until the connection closes); then echo.
  /reject?status=403   refuse the handshake with that HTTP status.
  /slowhs?ms=2000      delay the handshake response by ms milliseconds.
  /stt[?frame=640]     speech-to-text mock: requires "Authorization: Bearer
                       <token>" (HTTP 401 otherwise); counts received binary
                       bytes; every 10 binary frames sends
                       {"type":"partial","bytes":N}; on the text message
                       {"type":"end"} sends {"type":"final","bytes":TOTAL,
                       "frames":F,"frame_sizes":V} and closes with 1000.
                       V is "ok" when every binary message had exactly
                       `frame` bytes (640: 20 ms of 16 kHz 16-bit mono)
                       except the last one, which may be shorter (not
                       empty); otherwise it names the first offender.

Subprotocols: the server supports "chat", "superchat" and "v2.realtime" and
selects the first one the client offered that it supports (none otherwise;
a client that offers nothing is accepted too).
"""

import argparse
import asyncio
import json
import logging
import select
import socket
import struct
import sys
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

SUPPORTED_SUBPROTOCOLS = ["chat", "superchat", "v2.realtime"]

log = logging.getLogger("ws_server")


def pattern(n: int, offset: int = 0) -> bytes:
    """n bytes where byte i is ((i + offset) * 7) % 251."""
    period = bytes((i * 7) % 251 for i in range(251))
    start = offset % 251
    reps = (start + n) // 251 + 1
    return (period * reps)[start:start + n]


def split_request(path: str):
    parts = urlsplit(path)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts.path, parts.query, params


def int_param(params, name, default):
    try:
        return int(params.get(name, default))
    except ValueError:
        return default


def select_subprotocol(connection, offered):
    """First subprotocol in the client's order that the server supports."""
    for proto in offered:
        if proto in SUPPORTED_SUBPROTOCOLS:
            return proto
    return None


async def process_request(connection, request):
    path, _query, params = split_request(request.path)
    if path == "/reject":
        status = int_param(params, "status", 403)
        return connection.respond(status, "rejected by test server\n")
    if path == "/slowhs":
        await asyncio.sleep(int_param(params, "ms", 2000) / 1000.0)
        return None
    if path == "/stt":
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            response = connection.respond(HTTPStatus.UNAUTHORIZED,
                                          "missing or invalid bearer token\n")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    return None


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def h_info(ws, path, query, params):
    info = {
        "path": path,
        "query": query,
        "headers": [[k, v] for k, v in ws.request.headers.raw_items()],
        "subprotocol": ws.subprotocol,
    }
    await ws.send(json.dumps(info))
    await echo(ws)


async def h_close(ws, path, query, params):
    code = int_param(params, "code", 1000)
    reason = params.get("reason", "")
    if params.get("after") == "1":
        await ws.recv()
    await ws.close(code, reason)


def peer_gone(sock) -> bool:
    """True when the peer closed or reset the connection (no read needed)."""
    try:
        p = select.poll()
        p.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


async def h_pause(ws, path, query, params):
    ms = int_param(params, "ms", 3000)
    ws.transport.pause_reading()
    await asyncio.sleep(ms / 1000.0)
    ws.transport.resume_reading()
    await echo(ws)


async def h_silent(ws, path, query, params):
    ws.transport.pause_reading()
    sock = ws.transport.get_extra_info("socket")
    while not ws.transport.is_closing():
        await asyncio.sleep(0.2)
        if sock is None or peer_gone(sock):
            break
    ws.transport.abort()


async def h_drop(ws, path, query, params):
    if params.get("after") == "1":
        await ws.recv()
    if params.get("rst") == "1":
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def h_bigreply(ws, path, query, params):
    n = int_param(params, "n", 1000)
    await ws.send(pattern(n))
    await echo(ws)


async def h_flood(ws, path, query, params):
    size = max(8, int_param(params, "size", 1000))
    count = int_param(params, "count", 0)
    body = pattern(size - 8, 8)
    seq = 0
    while count == 0 or seq < count:
        await ws.send(struct.pack(">Q", seq) + body)
        seq += 1
        if seq % 16 == 0:
            # send() yields only when the socket is full: let other
            # connections (and the handshakes of new ones) run too
            await asyncio.sleep(0)
    await echo(ws)


async def h_stt(ws, path, query, params):
    frame = int_param(params, "frame", 640)
    total = 0
    frames = 0
    bad = None          # first binary message of the wrong size
    last_len = None     # size of the previous one if shorter than frame
    async for message in ws:
        if isinstance(message, bytes):
            total += len(message)
            frames += 1
            n = len(message)
            if bad is None and last_len is not None:
                # a short message that was not the last one
                bad = "message %d has %d bytes, want %d (only the last may be shorter)" % (
                    frames - 1, last_len, frame)
            if bad is None and (n > frame or n == 0):
                bad = "message %d has %d bytes, want %d" % (frames, n, frame)
            last_len = n if n < frame else None
            if frames % 10 == 0:
                await ws.send(json.dumps({"type": "partial", "bytes": total},
                                         separators=(",", ":")))
            continue
        try:
            msg = json.loads(message)
        except ValueError:
            msg = None
        if isinstance(msg, dict) and msg.get("type") == "end":
            await ws.send(json.dumps({"type": "final", "bytes": total, "frames": frames,
                                      "frame_sizes": bad or "ok"},
                                     separators=(",", ":")))
            await ws.close(1000, "done")
            return
        await ws.send(json.dumps({"type": "error", "message": "unexpected text message"},
                                 separators=(",", ":")))


async def h_echo(ws, path, query, params):
    await echo(ws)


HANDLERS = {
    "/info": h_info,
    "/close": h_close,
    "/pause": h_pause,
    "/silent": h_silent,
    "/drop": h_drop,
    "/bigreply": h_bigreply,
    "/flood": h_flood,
    "/stt": h_stt,
}


async def handler(ws):
    path, query, params = split_request(ws.request.path)
    fn = HANDLERS.get(path, h_echo)
    if fn is h_echo and params.get("info") == "1":
        fn = h_info
    try:
        await fn(ws, path, query, params)
    except ConnectionClosed:
        pass


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def main_async(args):
    common = dict(
        max_size=None,
        compression=None,
        ping_interval=None,       # the server never pings on its own
        close_timeout=2,
        open_timeout=10,
        select_subprotocol=select_subprotocol,
        process_request=process_request,
        max_queue=64,
    )
    server = await serve(handler, args.host, args.port, **common)
    port = server.sockets[0].getsockname()[1]
    port6 = None
    server6 = None
    if not args.no_ipv6 and ipv6_loopback_works():
        try:
            server6 = await serve(handler, "::1", args.port6, family=socket.AF_INET6, **common)
            port6 = server6.sockets[0].getsockname()[1]
        except OSError as e:
            log.warning("cannot listen on ::1: %s", e)
    print(json.dumps({"port": port, "port6": port6}), flush=True)
    # Run until stdin closes (the runner's end) or we are killed.
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    if args.watch_stdin:
        def on_stdin():
            if not sys.stdin.buffer.read1(4096) and not stop.done():
                stop.set_result(None)
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop


def expected_noise_filter(record: logging.LogRecord) -> bool:
    if record.getMessage() == "opening handshake failed":
        return False
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, ConnectionClosed):
        # e.g. asyncio's shutdown(SHUT_WR) on a socket the client reset
        return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port6", type=int, default=0)
    ap.add_argument("--no-ipv6", action="store_true")
    ap.add_argument("--watch-stdin", action="store_true",
                    help="exit when stdin reaches EOF")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="ws_server %(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Clients destroyed mid-handshake or mid-stream are part of the
        # tests: do not log those as errors (handler bugs still are).
        logging.getLogger("websockets").addFilter(expected_noise_filter)
        logging.getLogger("asyncio").addFilter(expected_noise_filter)
    log.info("websockets %s", websockets.__version__)
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
