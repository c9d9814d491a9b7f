#!/usr/bin/env python3
"""Scripted RFC 6455 peer for the conformance suite (asyncio, stdlib only).

One WebSocket port: the case is chosen by the request path /case/<id> and
is run as described in cases.py (handshake variant, bytes to send, frames
the client must send back, who closes TCP first). Every client frame is
parsed, unmasked and checked (mask bit, RSV, opcode, control frame rules,
nothing after the client's close frame) and the upgrade request is
validated on every case.

One control port (line protocol): "verdict <id>\\n" waits until the case's
connection has finished and answers "ok\\n" or "fail <why>\\n" (the
server-side verdict). c-tests/test_conformance.c asks it after each case.

Prints one JSON line on stdout when listening: {"port": P, "control": Q}.
Options: --slow F multiplies the waits for client reactions (valgrind);
--watch-stdin exits when stdin closes (the runner's pipe).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as C  # noqa: E402

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
log = logging.getLogger("conformance")
SLOW = 1.0
CASES = C.by_id()
DONE: dict = {}         # case id -> asyncio.Event (set when the run finished)
VERDICT: dict = {}      # case id -> "ok" / "fail ..."
PORT = 0


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def done_event(cid):
    ev = DONE.get(cid)
    if ev is None:
        ev = DONE[cid] = asyncio.Event()
    return ev


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "masked", "payload")

    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload

    def describe(self):
        name = {0: "cont", 1: "text", 2: "bin", 8: "close", 9: "ping", 10: "pong"}.get(self.opcode, "op%d" % self.opcode)
        p = self.payload
        if self.opcode == 8 and len(p) >= 2:
            body = "code=%d reason=%r" % (struct.unpack("!H", p[:2])[0], p[2:60])
        else:
            body = "payload=%r%s" % (p[:40], "...(%d bytes)" % len(p) if len(p) > 40 else "")
        return "%s fin=%d %s" % (name, self.fin, body)


def unmask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


class StepFailed(Exception):
    pass


class Run:
    """One case's connection."""

    def __init__(self, case, reader, writer):
        self.case, self.reader, self.writer = case, reader, writer
        self.fails: list[str] = []
        self.q: asyncio.Queue = asyncio.Queue()
        self.t0 = time.monotonic()
        # When the server last started a write: whatever the client does in
        # answer (a close timer it starts, say) comes after this.
        self.last_send_t = self.t0
        self.client_closed_frame = False
        self.eof = False
        self.server_fin = False
        self.reader_task = None

    def ms(self):
        return int((time.monotonic() - self.t0) * 1000)

    def fail(self, why):
        log.info("%s: FAIL %s", self.case.id, why)
        self.fails.append(why)

    # -- request -----------------------------------------------------------
    def check_request(self, lines):
        """Rule hs.request: the upgrade request is valid (every case)."""
        want_line = "GET /case/%s HTTP/1.1" % self.case.id
        if lines[0] != want_line:
            self.fail("request line %r, want %r" % (lines[0], want_line))
        hdrs = []
        for line in lines[1:]:
            if not line:
                continue
            if ":" not in line:
                self.fail("request header line without ':': %r" % line)
                continue
            k, v = line.split(":", 1)
            if k != k.strip() or not k:
                self.fail("bad request header name %r" % k)
            hdrs.append((k.strip().lower(), v.strip()))

        def one(name):
            vals = [v for k, v in hdrs if k == name]
            if len(vals) != 1:
                self.fail("request has %d %s headers, want 1" % (len(vals), name))
                return None
            return vals[0]

        host = one("host")
        if host is not None and host != "127.0.0.1:%d" % PORT:
            self.fail("Host %r, want 127.0.0.1:%d" % (host, PORT))
        up = one("upgrade")
        if up is not None and up.lower() != "websocket":
            self.fail("Upgrade %r" % up)
        conn = one("connection")
        if conn is not None and "upgrade" not in [t.strip().lower() for t in conn.split(",")]:
            self.fail("Connection %r lacks upgrade" % conn)
        key = one("sec-websocket-key")
        self.key = key or ""
        if key is not None:
            try:
                raw = base64.b64decode(key, validate=True)
                if len(raw) != 16 or len(key) != 24:
                    raise ValueError
            except ValueError:
                self.fail("Sec-WebSocket-Key %r is not base64 of 16 bytes" % key)
        ver = one("sec-websocket-version")
        if ver is not None and ver != "13":
            self.fail("Sec-WebSocket-Version %r" % ver)
        if any(k == "sec-websocket-extensions" for k, _ in hdrs):
            self.fail("the client offered extensions")
        protos = [v for k, v in hdrs if k == "sec-websocket-protocol"]
        offer = self.case.client.offer
        if offer:
            want = [p.strip() for p in offer.decode().split(",") if p.strip()]
            got = [p.strip() for v in protos for p in v.split(",") if p.strip()]
            if got != want:
                self.fail("Sec-WebSocket-Protocol %r, want the offer %r" % (protos, want))
        elif protos:
            self.fail("Sec-WebSocket-Protocol %r sent without an offer" % protos)

    # -- response ------------------------------------------------------------
    def response_head(self, hs):
        lines = [hs.status]
        if hs.upgrade is not None:
            lines.append("Upgrade: " + hs.upgrade)
        conns = hs.connection if isinstance(hs.connection, list) else [hs.connection]
        for c in conns:
            if c is not None:
                lines.append("Connection: " + c)
        accepts = hs.accept if isinstance(hs.accept, list) else [hs.accept]
        for a in accepts:
            if a is None:
                continue
            if a == "auto":
                a = accept_key(self.key)
            elif a == "lower":
                a = accept_key(self.key).lower()
            elif a == "key":
                a = self.key
            lines.append("Sec-WebSocket-Accept: " + a)
        if hs.protocol is not None:
            lines.append("Sec-WebSocket-Protocol: " + hs.protocol)
        if hs.extensions is not None:
            lines.append("Sec-WebSocket-Extensions: " + hs.extensions)
        for k, v in hs.extra:
            if k.lower() == "sec-websocket-accept" and v == "auto":
                v = accept_key(self.key)
            lines.append("%s: %s" % (k, v))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def write(self, data, chunk=None, delay_ms=0):
        self.last_send_t = time.monotonic()
        try:
            if not chunk:
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), 30 * SLOW)
                return
            for i in range(0, len(data), chunk):
                self.writer.write(data[i:i + chunk])
                await asyncio.wait_for(self.writer.drain(), 30 * SLOW)
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)
        except (ConnectionError, asyncio.TimeoutError) as e:
            raise StepFailed("write failed at %d ms (%s): the client closed TCP or stopped reading"
                             % (self.ms(), type(e).__name__))

    async def endless_headers(self):
        """Status line, then headers forever: the client must cut us off."""
        await self.write(b"HTTP/1.1 101 Switching Protocols\r\n")
        sent, i = 0, 0
        block = b"".join(b"X-Pad-%06d: %s\r\n" % (k, b"a" * 100) for k in range(64))
        try:
            while sent < (64 << 20):
                if self.eof:
                    return
                self.writer.write(block)
                await asyncio.wait_for(self.writer.drain(), 10 * SLOW)
                sent += len(block)
                i += 1
                if i % 16 == 0:
                    await asyncio.sleep(0)
        except (ConnectionError, asyncio.TimeoutError) as e:
            if isinstance(e, asyncio.TimeoutError):
                self.fail("the client stopped reading the endless head without closing")
            return
        self.fail("the client accepted %d bytes of response head without cutting it off" % sent)

    # -- client frames -------------------------------------------------------------
    async def read_frames(self):
        r = self.reader
        while True:
            try:
                b0, b1 = await r.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await r.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await r.readexactly(8))[0]
                masked = bool(b1 & 0x80)
                key = await r.readexactly(4) if masked else b""
                data = await r.readexactly(n) if n else b""
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    self.fail("client closed TCP inside a frame")
                break
            except ConnectionError:
                break
            f = Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, masked, unmask(data, key) if masked else data)
            self.check_client_frame(f)
            log.debug("%s: %d ms <- %s", self.case.id, self.ms(), f.describe())
            await self.q.put(("frame", f))
        self.eof = True
        log.debug("%s: %d ms <- EOF", self.case.id, self.ms())
        await self.q.put(("eof", None))

    def check_client_frame(self, f):
        """Rule send.masked (every frame of every case)."""
        if self.client_closed_frame:
            self.fail("the client sent a frame after its close frame: %s" % f.describe())
        if self.server_fin:
            self.fail("the client sent a frame after the server closed TCP: %s" % f.describe())
        if not f.masked:
            self.fail("unmasked client frame: %s" % f.describe())
        if f.rsv:
            self.fail("client frame with RSV %d" % f.rsv)
        if f.opcode not in (0, 1, 2, 8, 9, 10):
            self.fail("client frame with opcode %d" % f.opcode)
        if f.opcode >= 8:
            if not f.fin:
                self.fail("fragmented client control frame")
            if len(f.payload) > 125:
                self.fail("client control frame of %d bytes" % len(f.payload))
        if f.opcode == 8:
            self.client_closed_frame = True
            p = f.payload
            if len(p) == 1:
                self.fail("client close frame with a 1-byte body")
            elif len(p) >= 2:
                code = struct.unpack("!H", p[:2])[0]
                if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
                    self.fail("client sent close code %d" % code)
                try:
                    p[2:].decode("utf-8")
                except UnicodeDecodeError:
                    self.fail("client close reason is not UTF-8")

    async def next_item(self, timeout):
        return await asyncio.wait_for(self.q.get(), timeout)

    # -- steps ---------------------------------------------------------------------
    async def step(self, s):
        if isinstance(s, C.Send):
            data = s.data() if callable(s.data) else s.data
            await self.write(data, s.chunk, s.delay_ms)
        elif isinstance(s, C.Sleep):
            await asyncio.sleep(s.ms / 1000)
        elif isinstance(s, C.Expect):
            want = self.describe_expect(s)
            try:
                kind, f = await self.next_item(3.0 * SLOW)
            except asyncio.TimeoutError:
                raise StepFailed("no frame within %.0f s, expected %s" % (3.0 * SLOW, want))
            if kind == "eof":
                raise StepFailed("the client closed TCP at %d ms, expected %s" % (self.ms(), want))
            why = self.match(s, f)
            if why:
                raise StepFailed("got %s, expected %s (%s)" % (f.describe(), want, why))
        elif isinstance(s, C.Quiet):
            try:
                kind, f = await self.next_item(s.ms / 1000)
            except asyncio.TimeoutError:
                return
            if kind == "eof":
                raise StepFailed("the client closed TCP first (at %d ms, while the server kept it open)"
                                 % self.ms())
            raise StepFailed("unexpected frame %s" % f.describe())
        elif isinstance(s, C.CloseTCP):
            await self.server_close()
        elif isinstance(s, C.ExpectEOF):
            try:
                kind, f = await self.next_item(s.within_ms / 1000 * SLOW)
            except asyncio.TimeoutError:
                raise StepFailed("the client did not close TCP within %d ms" % (s.within_ms * SLOW))
            # Measured from the server's last write, which the client's close
            # timer cannot have started before (its close answers that write,
            # or follows it at once): a late wake-up of this server can make
            # the interval longer, never shorter than the client's timeout.
            dt = (time.monotonic() - self.last_send_t) * 1000
            if kind != "eof":
                raise StepFailed("unexpected frame %s (expected the client to close TCP)" % f.describe())
            if dt < s.min_ms:
                raise StepFailed("the client closed TCP after %d ms, before its close timeout (>= %d ms)"
                                 % (dt, s.min_ms))
        else:
            raise StepFailed("unknown step %r" % (s,))

    def describe_expect(self, s):
        if s.kind == "close":
            code = "any code" if s.code is C.ANY else ("an empty body" if s.code is None else "code %d" % s.code)
            reason = "" if s.reason is C.ANY else " reason %r" % s.reason
            return "close frame with %s%s" % (code, reason)
        p = "" if s.payload is C.ANY else " %r" % s.payload[:40]
        return "%s%s" % (s.kind, p)

    def match(self, s, f):
        op = {"close": 8, "pong": 10, "ping": 9, "text": 1, "bin": 2}[s.kind]
        if f.opcode != op:
            return "wrong opcode"
        if not f.fin:
            return "not a single frame"
        if s.kind == "close":
            p = f.payload
            if s.code is None:
                return "" if not p else "body not empty"
            if len(p) < 2:
                return "no code"
            code = struct.unpack("!H", p[:2])[0]
            if s.code is not C.ANY and code != s.code:
                return "code %d" % code
            if s.reason is not C.ANY and p[2:] != s.reason:
                return "reason %r" % p[2:]
            return ""
        if s.payload is not C.ANY and f.payload != s.payload:
            return "payload differs (%d bytes, want %d)" % (len(f.payload), len(s.payload))
        return ""

    async def server_close(self):
        """FIN from the server; then the client must close its side."""
        if self.server_fin:
            return
        if self.eof:
            raise StepFailed("the client closed TCP first (at %d ms)" % self.ms())
        self.server_fin = True
        try:
            self.writer.write_eof()
        except (OSError, RuntimeError):
            pass
        try:
            while True:
                kind, f = await self.next_item(3.0 * SLOW)
                if kind == "eof":
                    return
        except asyncio.TimeoutError:
            raise StepFailed("the client did not close TCP within %.0f s after the server's FIN" % (3.0 * SLOW))

    async def run(self, head_lines):
        case = self.case
        self.check_request(head_lines)
        hs = case.hs
        self.reader_task = asyncio.ensure_future(self.read_frames())
        try:
            if hs.raw is not None:
                await self.write(hs.raw)
            elif hs.endless:
                await self.endless_headers()
            elif hs.eof_after is not None:
                await self.write(self.response_head(hs)[:hs.eof_after])
                await self.server_close()
            else:
                await self.write(self.response_head(hs) + hs.body, hs.chunk, hs.delay_ms)
            for s in case.server:
                await self.step(s)
            # Epilogue: the server closes TCP unless someone already did.
            if not self.eof and not self.server_fin:
                await self.server_close()
        except StepFailed as e:
            self.fail(str(e))
        # Frames nobody expected.
        while not self.q.empty():
            kind, f = self.q.get_nowait()
            if kind == "frame":
                self.fail("unexpected frame %s" % f.describe())


async def handle(reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    run = None
    cid = None
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * SLOW)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) == 3 else ""
        cid = target[len("/case/"):] if target.startswith("/case/") else None
        case = CASES.get(cid)
        if case is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        if done_event(cid).is_set():
            DONE[cid] = asyncio.Event()      # a rerun of the same case
        run = Run(case, reader, writer)
        log.debug("%s: connected", cid)
        try:
            await run.run(lines)
        except Exception as e:  # a bug here must not hang the suite
            log.exception("%s: server error", cid)
            run.fail("server error: %r" % e)
    finally:
        if run is not None and run.reader_task is not None:
            run.reader_task.cancel()
        try:
            writer.close()
        except Exception:
            pass
        if run is not None:
            VERDICT[cid] = "ok" if not run.fails else "fail " + "; ".join(run.fails)
            log.info("%s: %s (%d ms)", cid, VERDICT[cid], run.ms())
            done_event(cid).set()


async def control(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            words = line.decode().split()
            if len(words) == 2 and words[0] == "verdict":
                cid = words[1]
                try:
                    await asyncio.wait_for(done_event(cid).wait(), 30 * SLOW)
                    answer = VERDICT.get(cid, "fail server: no verdict")
                except asyncio.TimeoutError:
                    answer = ("fail server: the case's connection did not finish within %.0f s" % (30 * SLOW)
                              if cid in VERDICT or DONE.get(cid) else "fail server: no connection for this case")
            else:
                answer = "fail server: bad control request %r" % line[:60]
            writer.write(answer.replace("\n", " ").encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def watch_stdin(stop: asyncio.Event):
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    stop.set()


async def main_async(args):
    global PORT
    srv = await asyncio.start_server(handle, "127.0.0.1", args.port, limit=1 << 16, backlog=256)
    ctl = await asyncio.start_server(control, "127.0.0.1", 0, backlog=256)
    PORT = srv.sockets[0].getsockname()[1]
    print(json.dumps({"port": PORT, "control": ctl.sockets[0].getsockname()[1]}), flush=True)
    stop = asyncio.Event()
    if args.watch_stdin:
        asyncio.ensure_future(watch_stdin(stop))
    async with srv, ctl:
        await stop.wait()


def main():
    global SLOW
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--slow", type=float, default=1.0, help="multiply waits for the client (valgrind)")
    ap.add_argument("--watch-stdin", action="store_true")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args()
    SLOW = args.slow
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(message)s")
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
