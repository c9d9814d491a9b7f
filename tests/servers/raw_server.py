#!/usr/bin/env python3
"""Scripted raw-TCP WebSocket peer for libpjwebsock's C tests.

No WebSocket library: every byte on the wire is written here, so a scenario
can send exactly what it wants (good or deliberately broken) and check
exactly what the client sends (the client's frames are parsed and unmasked,
and the mask bit is recorded).

Listens on 127.0.0.1 (ephemeral port unless --port) and prints one JSON line
on stdout once it listens: {"port": 40125}.

The scenario is chosen by the request path (query string = parameters); the
table SCENARIOS at the bottom lists them. To add one, write

    async def sc_name(c: Conn) -> None: ...

and add it to SCENARIOS. Conn gives: c.path, c.params, c.headers (list of
(name, value) in order), c.header(name), c.handshake(...) (a correct 101
response, with optional overrides), c.send_raw(bytes), c.send_frame(...),
c.send_close(code, reason), c.read_frame() -> Frame, c.finish() (wait for
the client's close frame, answer it, close TCP).

Scenarios for the C tests (all start with a correct handshake unless named
hs-*):
  /count-pings[?n=N]   answer every ping with a pong carrying the same
                       payload. The text "report" is answered with the text
                       "pings=<count> first_after_ms=<ms> avg_interval_ms=<ms>"
                       (ms since the handshake; -1 when undefined). With n=N
                       the text "pings=N" is sent after the N-th ping. Other
                       data messages are echoed.
  /expect-close        wait for the client's close frame, then answer with a
                       close frame that carries the client's code (1000 if it
                       sent none) and the reason "got:<code>:<reason>" (code
                       "none" for an empty body; truncated to 123 bytes), then
                       close TCP. Data messages before it are echoed.
  /close-empty         send a close frame with an empty body; wait for the
                       client's close frame; close TCP.
  /server-ping         send a ping with payload "ping-<n>" and wait for the
                       pong: reply text "pong-ok:<payload>" when the pong
                       carries the same payload, "pong-bad:<what>" otherwise;
                       then behave as /count-pings.
  /frames              describe every frame the client sends in a text
                       reply: "fin=1 rsv=0 op=1 masked=1 len=5 key=0a0b0c0d"
                       (for a close frame: the close is answered and TCP
                       closed).
  /hs-plus-frame       send the 101 response and a text frame "early" in the
                       same TCP segment, then echo.
  /fragmented          send "frag" + "men" + "ted" as a fragmented text
                       message with a ping between the fragments, then echo.
  /send?hex=HEX[&then=echo|close|wait|tcp-close]
                       after the handshake send the raw bytes HEX, then
                       (default echo) echo / finish the close handshake /
                       wait silently / close TCP.
  /echo                plain echo through this implementation.
  /hs-status-401       "HTTP/1.1 401 Unauthorized" with a body, then close.
  /hs-status-200       "HTTP/1.1 200 OK" with a body, then close.
  /hs-bad-accept       101 with a wrong Sec-WebSocket-Accept.
  /hs-no-accept        101 without Sec-WebSocket-Accept.
  /hs-no-upgrade       101 without the Upgrade header.
  /hs-bad-upgrade      101 with "Upgrade: h2c".
  /hs-no-connection    101 without the Connection header.
  /hs-bad-subprotocol  101 selecting a subprotocol the client did not offer.
  /hs-extension        101 selecting permessage-deflate (never offered).
  /hs-garbage          a response that is not HTTP at all.
  /hs-huge             a 101 response whose head exceeds 20 KiB.
  /hs-eof              close TCP right after reading the request.
  /hs-slow?ms=N        wait N ms, then a correct handshake and echo.
"""

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import logging
import struct
import sys
import time
from urllib.parse import parse_qs, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

log = logging.getLogger("raw_server")


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
                 mask: bytes | None = None, length: int | None = None) -> bytes:
    """One frame as the server would send it (unmasked unless mask given).
    length overrides the encoded payload length (to forge broken frames)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    if code is None:
        return b""
    return struct.pack("!H", code) + reason


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "masked", "key", "payload")

    def __init__(self, fin, rsv, opcode, masked, key, payload):
        self.fin, self.rsv, self.opcode = fin, rsv, opcode
        self.masked, self.key, self.payload = masked, key, payload

    def describe(self) -> str:
        return "fin=%d rsv=%d op=%d masked=%d len=%d key=%s" % (
            self.fin, self.rsv, self.opcode, self.masked, len(self.payload),
            self.key.hex() if self.key else "-")

    def close_code(self):
        if len(self.payload) >= 2:
            return struct.unpack("!H", self.payload[:2])[0]
        return None

    def close_reason(self) -> bytes:
        return self.payload[2:]


class ClientClosed(Exception):
    """The client closed TCP (or a read timed out)."""


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.request_line = ""
        self.target = ""
        self.path = ""
        self.query = ""
        self.params: dict[str, str] = {}
        self.headers: list[tuple[str, str]] = []
        self.t_open = time.monotonic()
        self.frames: list[Frame] = []     # every frame received, in order

    # -- request ---------------------------------------------------------
    async def read_request(self) -> bool:
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ConnectionError):
            return False
        lines = head.decode("latin-1").split("\r\n")
        self.request_line = lines[0]
        parts = self.request_line.split(" ")
        if len(parts) != 3:
            return False
        self.target = parts[1]
        u = urlsplit(self.target)
        self.path, self.query = u.path, u.query
        self.params = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip()))
        return True

    def header(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def param_int(self, name: str, default: int) -> int:
        try:
            return int(self.params.get(name, default))
        except ValueError:
            return default

    # -- sending -----------------------------------------------------------
    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def handshake_bytes(self, status_line: str = "HTTP/1.1 101 Switching Protocols",
                        upgrade: str | None = "websocket",
                        connection: str | None = "Upgrade",
                        accept: str | None = "auto",
                        extra: list[tuple[str, str]] | None = None) -> bytes:
        lines = [status_line]
        if upgrade is not None:
            lines.append("Upgrade: " + upgrade)
        if connection is not None:
            lines.append("Connection: " + connection)
        if accept == "auto":
            accept = accept_key(self.header("Sec-WebSocket-Key", ""))
        if accept is not None:
            lines.append("Sec-WebSocket-Accept: " + accept)
        for k, v in extra or []:
            lines.append("%s: %s" % (k, v))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def handshake(self, **kw) -> None:
        await self.send_raw(self.handshake_bytes(**kw))
        self.t_open = time.monotonic()

    async def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> None:
        await self.send_raw(encode_frame(opcode, payload, **kw))

    async def send_close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        await self.send_frame(OP_CLOSE, close_payload(code, reason))

    async def close_tcp(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (ConnectionError, asyncio.TimeoutError):
            pass

    # -- receiving ---------------------------------------------------------
    async def read_exact(self, n: int, timeout: float | None) -> bytes:
        try:
            if timeout is None:
                return await self.reader.readexactly(n)
            return await asyncio.wait_for(self.reader.readexactly(n), timeout)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError) as e:
            raise ClientClosed(str(e) or type(e).__name__)

    async def read_frame(self, timeout: float | None = 60) -> Frame:
        b0, b1 = await self.read_exact(2, timeout)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.read_exact(2, timeout))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.read_exact(8, timeout))[0]
        masked = bool(b1 & 0x80)
        key = await self.read_exact(4, timeout) if masked else b""
        data = await self.read_exact(n, timeout) if n else b""
        if masked:
            data = unmask(data, key)
        f = Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, masked, key, data)
        self.frames.append(f)
        log.debug("%s <- %s", self.path, f.describe())
        return f

    async def read_message(self, timeout: float | None = 60):
        """Next data message (opcode, payload), answering pings on the way.
        Returns (OP_CLOSE, frame) when the client sends a close frame."""
        op, parts = None, []
        while True:
            f = await self.read_frame(timeout)
            if f.opcode == OP_PING:
                await self.send_frame(OP_PONG, f.payload)
            elif f.opcode == OP_PONG:
                pass
            elif f.opcode == OP_CLOSE:
                return OP_CLOSE, f
            else:
                if f.opcode != OP_CONT:
                    op = f.opcode
                parts.append(f.payload)
                if f.fin:
                    return op, b"".join(parts)

    async def answer_close(self, f: Frame) -> None:
        """Echo the client's close code (empty body for an empty body)."""
        code = f.close_code()
        await self.send_close(code, b"")
        await self.close_tcp()

    async def finish(self, timeout: float = 10) -> None:
        """Wait for the client's close frame (skipping data), answer, close TCP."""
        try:
            while True:
                op, f = await self.read_message(timeout)
                if op == OP_CLOSE:
                    await self.answer_close(f)
                    return
        except ClientClosed:
            await self.close_tcp()

    async def echo(self) -> None:
        try:
            while True:
                op, data = await self.read_message(None)
                if op == OP_CLOSE:
                    await self.answer_close(data)
                    return
                await self.send_frame(op, data)
        except ClientClosed:
            await self.close_tcp()


def unmask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


def ms_since(t0: float) -> int:
    return int(round((time.monotonic() - t0) * 1000))


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

async def ping_counter(c: Conn, prefix: str = "") -> None:
    n_report = c.param_int("n", 0)
    pings: list[float] = []
    try:
        while True:
            f = await c.read_frame(None)
            if f.opcode == OP_PING:
                pings.append(time.monotonic())
                await c.send_frame(OP_PONG, f.payload)
                if n_report and len(pings) == n_report:
                    await c.send_frame(OP_TEXT, ("pings=%d" % n_report).encode())
            elif f.opcode == OP_PONG:
                pass
            elif f.opcode == OP_CLOSE:
                await c.answer_close(f)
                return
            elif f.opcode == OP_TEXT and f.payload == b"report":
                first = int(round((pings[0] - c.t_open) * 1000)) if pings else -1
                if len(pings) >= 2:
                    avg = int(round((pings[-1] - pings[0]) * 1000 / (len(pings) - 1)))
                else:
                    avg = -1
                msg = "%spings=%d first_after_ms=%d avg_interval_ms=%d" % (
                    prefix, len(pings), first, avg)
                await c.send_frame(OP_TEXT, msg.encode())
            elif f.opcode in (OP_TEXT, OP_BIN):
                await c.send_frame(f.opcode, f.payload)
    except ClientClosed:
        await c.close_tcp()


async def sc_count_pings(c: Conn) -> None:
    await c.handshake()
    await ping_counter(c)


async def sc_server_ping(c: Conn) -> None:
    await c.handshake()
    payload = b"ping-%d" % int(time.monotonic() * 1000 % 100000)
    await c.send_frame(OP_PING, payload)
    try:
        while True:
            f = await c.read_frame(10)
            if f.opcode == OP_PONG:
                if f.payload == payload:
                    await c.send_frame(OP_TEXT, b"pong-ok:" + payload)
                else:
                    await c.send_frame(OP_TEXT, b"pong-bad:payload " + f.payload[:60])
                break
            if f.opcode == OP_CLOSE:
                await c.answer_close(f)
                return
            # a data frame or a ping before the pong: report, keep waiting
            if f.opcode == OP_PING:
                await c.send_frame(OP_PONG, f.payload)
    except ClientClosed:
        await c.close_tcp()
        return
    await ping_counter(c)


async def sc_expect_close(c: Conn) -> None:
    await c.handshake()
    try:
        while True:
            op, data = await c.read_message(None)
            if op == OP_CLOSE:
                f = data
                code = f.close_code()
                reason = f.close_reason()
                text = b"got:" + (str(code).encode() if code is not None else b"none") + b":" + reason
                log.info("expect-close: client sent %r (masked=%d)", f.payload, f.masked)
                await c.send_close(code if code is not None else 1000, text[:123])
                await c.close_tcp()
                return
            await c.send_frame(op, data)
    except ClientClosed:
        await c.close_tcp()


async def sc_close_empty(c: Conn) -> None:
    await c.handshake()
    await c.send_close(None)
    try:
        while True:
            f = await c.read_frame(10)
            if f.opcode == OP_CLOSE:
                log.info("close-empty: client answered %r", f.payload)
                break
    except ClientClosed:
        pass
    await c.close_tcp()


async def sc_frames(c: Conn) -> None:
    await c.handshake()
    try:
        while True:
            f = await c.read_frame(None)
            if f.opcode == OP_CLOSE:
                await c.answer_close(f)
                return
            if f.opcode == OP_PING:
                await c.send_frame(OP_PONG, f.payload)
                continue
            await c.send_frame(OP_TEXT, f.describe().encode())
    except ClientClosed:
        await c.close_tcp()


async def sc_hs_plus_frame(c: Conn) -> None:
    await c.send_raw(c.handshake_bytes() + encode_frame(OP_TEXT, b"early"))
    await c.echo()


async def sc_fragmented(c: Conn) -> None:
    await c.handshake()
    await c.send_raw(encode_frame(OP_TEXT, b"frag", fin=False)
                     + encode_frame(OP_CONT, b"men", fin=False)
                     + encode_frame(OP_PING, b"mid")
                     + encode_frame(OP_CONT, b"ted", fin=True))
    await c.echo()


async def sc_send(c: Conn) -> None:
    await c.handshake()
    try:
        data = binascii.unhexlify(c.params.get("hex", ""))
    except (binascii.Error, ValueError):
        data = b""
    await c.send_raw(data)
    then = c.params.get("then", "echo")
    if then == "close":
        await c.finish()
    elif then == "wait":
        try:
            while True:
                await c.read_frame(None)
        except ClientClosed:
            await c.close_tcp()
    elif then == "tcp-close":
        await c.close_tcp()
    else:
        await c.echo()


async def sc_echo(c: Conn) -> None:
    await c.handshake()
    await c.echo()


def http_error(status: str, body: bytes, extra: str = "") -> bytes:
    return ("HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s"
            "Connection: close\r\n\r\n" % (status, len(body), extra)).encode() + body


async def sc_hs_status_401(c: Conn) -> None:
    await c.send_raw(http_error("401 Unauthorized", b"unauthorized\n",
                                "WWW-Authenticate: Bearer\r\n"))
    await c.close_tcp()


async def sc_hs_status_200(c: Conn) -> None:
    await c.send_raw(http_error("200 OK", b"hello\n"))
    await c.close_tcp()


async def hs_then_echo(c: Conn, **kw) -> None:
    await c.handshake(**kw)
    await c.echo()


async def sc_hs_bad_accept(c: Conn) -> None:
    await hs_then_echo(c, accept=accept_key("dGhlIHNhbXBsZSBub25jZQ=="[::-1]))


async def sc_hs_no_accept(c: Conn) -> None:
    await hs_then_echo(c, accept=None)


async def sc_hs_no_upgrade(c: Conn) -> None:
    await hs_then_echo(c, upgrade=None)


async def sc_hs_bad_upgrade(c: Conn) -> None:
    await hs_then_echo(c, upgrade="h2c")


async def sc_hs_no_connection(c: Conn) -> None:
    await hs_then_echo(c, connection=None)


async def sc_hs_bad_subprotocol(c: Conn) -> None:
    await hs_then_echo(c, extra=[("Sec-WebSocket-Protocol", "never-offered")])


async def sc_hs_extension(c: Conn) -> None:
    await hs_then_echo(c, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])


async def sc_hs_garbage(c: Conn) -> None:
    await c.send_raw(b"\x00\x01garbage that is not HTTP\r\n\r\n")
    await c.close_tcp()


async def sc_hs_huge(c: Conn) -> None:
    await hs_then_echo(c, extra=[("X-Filler-%d" % i, "x" * 1000) for i in range(21)])


async def sc_hs_eof(c: Conn) -> None:
    await c.close_tcp()


async def sc_hs_slow(c: Conn) -> None:
    await asyncio.sleep(c.param_int("ms", 2000) / 1000.0)
    await hs_then_echo(c)


async def sc_not_found(c: Conn) -> None:
    await c.send_raw(http_error("404 Not Found", b"no such scenario: " + c.path.encode() + b"\n"))
    await c.close_tcp()


SCENARIOS = {
    "/count-pings": sc_count_pings,
    "/server-ping": sc_server_ping,
    "/expect-close": sc_expect_close,
    "/close-empty": sc_close_empty,
    "/frames": sc_frames,
    "/hs-plus-frame": sc_hs_plus_frame,
    "/fragmented": sc_fragmented,
    "/send": sc_send,
    "/echo": sc_echo,
    "/hs-status-401": sc_hs_status_401,
    "/hs-status-200": sc_hs_status_200,
    "/hs-bad-accept": sc_hs_bad_accept,
    "/hs-no-accept": sc_hs_no_accept,
    "/hs-no-upgrade": sc_hs_no_upgrade,
    "/hs-bad-upgrade": sc_hs_bad_upgrade,
    "/hs-no-connection": sc_hs_no_connection,
    "/hs-bad-subprotocol": sc_hs_bad_subprotocol,
    "/hs-extension": sc_hs_extension,
    "/hs-garbage": sc_hs_garbage,
    "/hs-huge": sc_hs_huge,
    "/hs-eof": sc_hs_eof,
    "/hs-slow": sc_hs_slow,
}


async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    c = Conn(reader, writer)
    try:
        if not await c.read_request():
            await c.close_tcp()
            return
        log.debug("request %s %s", c.target, c.headers)
        await SCENARIOS.get(c.path, sc_not_found)(c)
    except (ConnectionError, ClientClosed):
        await c.close_tcp()
    except Exception:  # a bug in a scenario: log it, never kill the server
        log.exception("scenario %s failed", c.path)
        await c.close_tcp()


async def main_async(args) -> None:
    server = await asyncio.start_server(on_client, args.host, args.port, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    if args.watch_stdin:
        def on_stdin():
            if not sys.stdin.buffer.read1(4096) and not stop.done():
                stop.set_result(None)
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    async with server:
        await stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--watch-stdin", action="store_true",
                    help="exit when stdin reaches EOF")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="raw_server %(asctime)s %(levelname)s: %(message)s")
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
