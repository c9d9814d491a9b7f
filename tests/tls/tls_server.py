#!/usr/bin/env python3
"""TLS WebSocket peers for libpjwebsock's wss:// tests.

    python tests/tls/tls_server.py --certs CERTDIR [--watch-stdin] [-v]

CERTDIR is what tests/tls/certs.py made. Everything listens on 127.0.0.1
with ephemeral ports; once all listen, one JSON line goes to stdout:

    {"valid": P, "wronghost": P, "expired": P, "selfsigned": P,
     "iponly": P, "iponly2": P or null, "mtls": P, "tls12": P, "tls13": P,
     "plain": P, "raw": P, "mtlsraw": P, "mtlssync": P, "stall": P,
     "clientpref": P, "clientpref12": P}

websockets servers (one per TLS variant), each recording the SNI that
every connection presented (ssl context sni_callback):
  valid       valid.pem (DNS:localhost, DNS:pjws.test, IP:127.0.0.1)
  wronghost   wronghost.pem (DNS:wrong.example)
  expired     expired.pem
  selfsigned  selfsigned.pem
  iponly      iponly.pem (IP:127.0.0.1 only); iponly2 is the same server
              on 127.0.0.2 (null when that address cannot be bound)
  mtls        valid.pem, client certificate REQUIRED (issued by ca.pem)
  tls12       valid.pem, TLS 1.2 only
  tls13       valid.pem, TLS 1.3 only
  plain       no TLS at all (ws://; a wss:// client meets HTTP 400)
  clientpref  valid.pem, TLS 1.2 and 1.3, picking the first suite in the
              client's order (the others prefer their own order, as
              Python's ssl does by default)
  clientpref12  the same, TLS 1.2 only
Paths on those:
  /sni        first a text message, JSON: {"sni": name or null,
              "version": "TLSv1.3", "cipher": "...", "peer_cn": CN of the
              client certificate or null, "alpn": ... or null}; then echo
  /pause?ms=N stop reading the socket for N ms (default 1000), so that the
              client's socket fills and its sends wait; then echo
  (others)    echo every message, same type, in order

raw: a hand-written TLS WebSocket server (ssl.MemoryBIO, one thread per
connection) with valid.pem, for what the websockets package cannot show
(/sni as above, echo otherwise, and):
  /trickle    send a 100000-byte BIN message (pattern (i*7)%251) and the
              TEXT "trickle-done", writing the ciphertext to TCP in small
              pieces (1..4099 bytes) so that TLS records arrive split
              across reads; then echo
  /closecheck?id=ID[&server=1]
              echo; when the client sends a close frame, answer it, then
              watch how the client ends TLS: "notify" (a close_notify
              arrived), "eof" (TCP FIN without close_notify: "EOF occurred
              in violation of protocol"), "reset" or "timeout". With
              server=1 the server starts the close handshake itself (close
              1000 "server bye" after echoing the first message), answers the client's close frame with its
              own close_notify + FIN, and then watches the same way.
              The verdict is stored under ID.
  /result?id=ID
              one text message: the verdict stored under ID ("pending" if
              none yet); then echo

mtlsraw: the raw server with a client certificate REQUIRED (issued by
ca.pem). Unlike asyncio (which closes the connection without flushing the
alert), it sends OpenSSL's alert when it rejects the client (in TLS 1.3:
certificate_required, after the client's handshake completed), then ends
TCP gracefully (FIN, draining what the client still sends).

mtlssync: websockets' threaded server (websockets.sync.server: ssl.SSLSocket
over a blocking socket) with valid.pem, a client certificate REQUIRED
(issued by ca.pem), /sni and echo as above. OpenSSL writes to the socket
itself here, so its alert goes out when it rejects the client (TLS 1.3:
certificate_required, 116, after the client's handshake completed) before
websockets closes the socket, which resets the connection (the client's
Finished and anything after it are still unread). The asyncio server ("mtls") does not send it:
asyncio's SSL transport closes the connection when the server's handshake
fails without writing out the alert OpenSSL queued, so its client sees
only the TCP end.

stall: accepts TCP connections and never sends a byte (a TLS server that
hangs in the handshake). Connections are closed when the client closes.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import serve
from websockets.sync.server import serve as serve_sync

log = logging.getLogger("tls_server")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern(n: int, offset: int = 0) -> bytes:
    period = bytes((i * 7) % 251 for i in range(251))
    start = offset % 251
    reps = (start + n) // 251 + 1
    return (period * reps)[start:start + n]


def pattern_text(n: int, offset: int = 0) -> bytes:
    """Printable ASCII: byte k is 'a' + (offset + k) % 26."""
    return bytes(97 + (offset + k) % 26 for k in range(n))


def split_request(path: str):
    parts = urlsplit(path)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts.path, params


# ---------------------------------------------------------------------------
# SSL contexts

def record_sni(sslobj, server_name, ctx):
    # sslobj is the connection's SSLObject (asyncio) or SSLObject (raw)
    try:
        sslobj.pjws_sni = server_name
    except AttributeError:
        pass
    return None


def make_ctx(certs: Path, name: str, *, min_v=None, max_v=None, client_ca=None, client_order=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if client_order:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(certs / (name + ".pem")), str(certs / (name + ".key")))
    if min_v:
        ctx.minimum_version = min_v
    if max_v:
        ctx.maximum_version = max_v
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(client_ca))
    ctx.sni_callback = record_sni
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# ---------------------------------------------------------------------------
# websockets servers

def peer_cn(sslobj):
    try:
        cert = sslobj.getpeercert()
    except (ValueError, AttributeError):
        return None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


async def handler(ws):
    path, params = split_request(ws.request.path)
    if path == "/pause":
        ws.transport.pause_reading()
        await asyncio.sleep(int(params.get("ms") or 1000) / 1000.0)
        ws.transport.resume_reading()
    if path == "/sni":
        sslobj = ws.transport.get_extra_info("ssl_object")
        if sslobj is None:
            info = {"sni": None, "version": None, "cipher": None, "peer_cn": None, "alpn": None}
        else:
            c = sslobj.cipher()
            info = {"sni": getattr(sslobj, "pjws_sni", None), "version": sslobj.version(),
                    "cipher": c[0] if c else None, "peer_cn": peer_cn(sslobj),
                    "alpn": sslobj.selected_alpn_protocol()}
        await ws.send(json.dumps(info))
    async for message in ws:
        await ws.send(message)


def sync_handler(ws):
    """handler() for websockets' threaded server (mtlssync)."""
    path, _params = split_request(ws.request.path)
    if path == "/sni":
        sslobj = ws.socket
        c = sslobj.cipher()
        ws.send(json.dumps({"sni": getattr(sslobj, "pjws_sni", None), "version": sslobj.version(),
                            "cipher": c[0] if c else None, "peer_cn": peer_cn(sslobj),
                            "alpn": sslobj.selected_alpn_protocol()}))
    for message in ws:
        ws.send(message)


def start_sync_server(ctx: ssl.SSLContext) -> int:
    """websockets.sync.server on 127.0.0.1 in a daemon thread; its port."""
    srv = serve_sync(sync_handler, "127.0.0.1", 0, ssl=ctx, max_size=None, compression=None,
                     ping_interval=None, close_timeout=2, open_timeout=10)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.socket.getsockname()[1]


# ---------------------------------------------------------------------------
# raw TLS server (threads + MemoryBIO)

class PeerGone(Exception):
    pass


class RawTls:
    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext):
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)
        self.eof = False
        self.reset = False

    def flush(self, chunked=False):
        data = self.out.read()
        if not data:
            return
        if not chunked:
            self.sock.sendall(data)
            return
        sizes = (1, 2, 3, 5, 7, 13, 100, 1000, 4099, 1, 517)
        i = pos = 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            self.sock.sendall(data[pos:pos + n])
            pos += n
            i += 1
            if i < 200 or i % 50 == 0:
                time.sleep(0.0005)

    def fill(self, timeout=None) -> bool:
        """Feeds socket bytes to the TLS object; False on EOF/reset/timeout."""
        if self.eof:
            return False
        if timeout is not None:
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                raise TimeoutError()
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            d = b""
        if not d:
            self.eof = True
            self.inc.write_eof()
            return False
        self.inc.write(d)
        return True

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                if not self.fill(10):
                    raise PeerGone("EOF in handshake")
            except ssl.SSLError:
                # send the alert OpenSSL queued (e.g. certificate_required)
                self.flush()
                raise

    def read_plain(self):
        """Plaintext after the handshake; None when TLS fails (alert sent)."""
        try:
            return self.read(65536, 10)
        except ssl.SSLError as e:
            log.info("TLS failed after the handshake: %s", e)
            self.flush()
            return None

    def linger(self, seconds=2.0):
        """Graceful end after an alert: FIN, then drain what the client still
        sends (so that closing does not turn into a RST that could overtake
        the alert), until the client closes or `seconds` pass."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                if not self.sock.recv(65536):
                    break
            except OSError:
                break

    def write(self, data: bytes, chunked=False):
        self.obj.write(data)
        self.flush(chunked)

    def read(self, n=65536, timeout=None) -> bytes:
        """Plaintext; b'' after close_notify. Raises ssl.SSLEOFError on a
        TCP EOF without close_notify."""
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLWantReadError:
                self.flush()
                self.fill(timeout)


class WsReader:
    def __init__(self, tls: RawTls):
        self.tls = tls
        self.buf = bytearray()

    def need(self, n, timeout=None):
        while len(self.buf) < n:
            d = self.tls.read(65536, timeout)
            if not d:
                raise PeerGone("close_notify")
            self.buf += d

    def request_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            d = self.tls.read(65536, 10)
            if not d:
                raise PeerGone("EOF in request")
            self.buf += d
        i = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:i])
        del self.buf[:i]
        return head

    def frame(self, timeout=None):
        self.need(2, timeout)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        hl = 2
        if n == 126:
            self.need(4, timeout)
            n = struct.unpack(">H", self.buf[2:4])[0]
            hl = 4
        elif n == 127:
            self.need(10, timeout)
            n = struct.unpack(">Q", self.buf[2:10])[0]
            hl = 10
        masked = b1 & 0x80
        if masked:
            hl += 4
        self.need(hl + n, timeout)
        key = bytes(self.buf[hl - 4:hl]) if masked else b"\0\0\0\0"
        payload = bytes(self.buf[hl:hl + n])
        del self.buf[:hl + n]
        if masked:
            k = int.from_bytes(key * ((n + 3) // 4), "big") if n else 0
            if n:
                pad = (4 - n % 4) % 4
                p = int.from_bytes(payload + b"\0" * pad, "big") ^ k
                payload = p.to_bytes(n + pad, "big")[:n]
        return b0 & 0x80, b0 & 0x0F, payload


def ws_frame(op: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        h = struct.pack(">BB", 0x80 | op, n)
    elif n < 65536:
        h = struct.pack(">BBH", 0x80 | op, 126, n)
    else:
        h = struct.pack(">BBQ", 0x80 | op, 127, n)
    return h + payload


class RawServer:
    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.results = {}
        self.lock = threading.Lock()
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(s,), daemon=True).start()

    def set_result(self, cid, verdict):
        if cid is None:
            return
        with self.lock:
            self.results[cid] = verdict
        log.info("closecheck %s: %s", cid, verdict)

    def conn(self, s: socket.socket):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = RawTls(s, self.ctx)
        try:
            try:
                tls.handshake()
            except ssl.SSLError as e:
                # TLS 1.2: the client certificate is checked in the handshake
                log.info("handshake failed: %s (alert sent)", e)
                tls.linger()
                return
            # (TLS 1.3 with a client certificate required: the client's
            # handshake completed before the server checked its certificate;
            # the verdict comes with the first read below, and its alert is
            # sent by the ssl.SSLError handler)
            rd = WsReader(tls)
            head = rd.request_head().decode("latin-1")
            lines = head.split("\r\n")
            target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
            key = ""
            for l in lines[1:]:
                name, _, value = l.partition(":")
                if name.strip().lower() == "sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            path, params = split_request(target)
            tls.obj.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
            if path == "/burst":
                # `count` TEXT messages of `size` bytes, each in its own TLS
                # record, sent with the 101 response in one TCP write; then
                # the server only echoes (nothing more arrives unasked).
                count, size = int(params.get("count", "2000")), int(params.get("size", "200"))
                for i in range(count):
                    tls.obj.write(ws_frame(1, (b"%08d" % i) + bytes(pattern_text(size - 8, i))))
            tls.flush()
            if path == "/trickle":
                tls.write(ws_frame(2, pattern(100000)) + ws_frame(1, b"trickle-done"), chunked=True)
            elif path == "/sni":
                c = tls.obj.cipher()
                info = {"sni": getattr(tls.obj, "pjws_sni", None), "version": tls.obj.version(),
                        "cipher": c[0] if c else None, "peer_cn": peer_cn(tls.obj),
                        "alpn": tls.obj.selected_alpn_protocol()}
                tls.write(ws_frame(1, json.dumps(info).encode()))
            elif path == "/result":
                with self.lock:
                    v = self.results.get(params.get("id"), "pending")
                tls.write(ws_frame(1, v.encode()))
            cid = params.get("id") if path == "/closecheck" else None
            server_close = path == "/closecheck" and params.get("server") == "1"
            self.echo(tls, rd, cid, server_close)
        except ssl.SSLError as e:
            log.info("raw connection: TLS failed: %r (alert sent)", e)
            tls.flush()
            tls.linger()
        except (PeerGone, OSError, TimeoutError) as e:
            log.info("raw connection ended: %r", e)
        finally:
            try:
                s.close()
            except OSError:
                pass

    def echo(self, tls: RawTls, rd: WsReader, cid, server_close):
        close_sent = False
        while True:
            try:
                fin, op, payload = rd.frame()
            except ssl.SSLEOFError:
                self.set_result(cid, "eof-before-close-frame")
                return
            except PeerGone:
                self.set_result(cid, "notify-before-close-frame")
                return
            if op in (1, 2, 0):
                tls.write(ws_frame(op, payload))
                if server_close and not close_sent:
                    # server-initiated close after the first echo
                    tls.write(ws_frame(8, struct.pack(">H", 1000) + b"server bye"))
                    close_sent = True
            elif op == 9:
                tls.write(ws_frame(10, payload))
            elif op == 8:
                if cid is None:
                    # an ordinary server: answer, end TLS and TCP
                    if not close_sent:
                        tls.write(ws_frame(8, payload[:2]))
                    self.send_notify(tls)
                    tls.linger()
                    return
                if not close_sent:
                    tls.write(ws_frame(8, payload[:2]))
                    # the client may now end TLS (close_notify) and
                    # TCP; give it 1.5 s, then end ours and watch again
                    v = self.watch_end(tls, rd, 1.5)
                    if v == "timeout":
                        self.send_notify(tls)
                        v = self.watch_end(tls, rd, 4.0)
                        v = v + "-after-server-notify"
                else:
                    # server-initiated: the reply came; the server ends TLS
                    # and TCP (write side) first, the client answers
                    self.send_notify(tls)
                    v = self.watch_end(tls, rd, 4.0)
                self.set_result(cid, v)
                return

    @staticmethod
    def send_notify(tls: RawTls):
        try:
            tls.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass
        tls.flush()
        try:
            tls.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def watch_end(tls: RawTls, rd: WsReader, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                d = tls.read(65536, left)
            except ssl.SSLEOFError:
                return "reset" if tls.reset else "eof"
            except TimeoutError:
                return "timeout"
            except ssl.SSLError as e:
                return "ssl-error:%s" % e.reason
            except OSError:
                return "reset"
            if not d:
                return "notify"
            # ignore data after the close frame (there should be none)


# ---------------------------------------------------------------------------
# stall server

class StallServer:
    def __init__(self):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        conns = []
        while True:
            r, _, _ = select.select([self.ls] + conns, [], [], 1.0)
            for s in r:
                if s is self.ls:
                    c, _ = self.ls.accept()
                    conns.append(c)
                    continue
                try:
                    d = s.recv(65536)   # read (and ignore) the ClientHello
                except OSError:
                    d = b""
                if not d:
                    conns.remove(s)
                    s.close()


# ---------------------------------------------------------------------------

async def main_async(args):
    certs = Path(args.certs)
    ca = certs / "ca.pem"
    common = dict(max_size=None, compression=None, ping_interval=None, close_timeout=2,
                  open_timeout=10, max_queue=64)
    ports = {}
    servers = []

    async def start(name, ctx, host="127.0.0.1"):
        srv = await serve(handler, host, 0, ssl=ctx, **common)
        servers.append(srv)
        ports[name] = srv.sockets[0].getsockname()[1]

    await start("valid", make_ctx(certs, "valid"))
    await start("wronghost", make_ctx(certs, "wronghost"))
    await start("expired", make_ctx(certs, "expired"))
    await start("selfsigned", make_ctx(certs, "selfsigned"))
    iponly_ctx = make_ctx(certs, "iponly")
    await start("iponly", iponly_ctx)
    try:
        await start("iponly2", iponly_ctx, "127.0.0.2")
    except OSError as e:
        log.warning("cannot bind 127.0.0.2: %s", e)
        ports["iponly2"] = None
    await start("mtls", make_ctx(certs, "valid", client_ca=ca))
    await start("tls12", make_ctx(certs, "valid", max_v=ssl.TLSVersion.TLSv1_2))
    await start("tls13", make_ctx(certs, "valid", min_v=ssl.TLSVersion.TLSv1_3))
    await start("plain", None)
    await start("clientpref", make_ctx(certs, "valid", client_order=True))
    await start("clientpref12", make_ctx(certs, "valid", max_v=ssl.TLSVersion.TLSv1_2, client_order=True))
    raw = RawServer(make_ctx(certs, "valid"))
    ports["raw"] = raw.port
    mtls_raw = RawServer(make_ctx(certs, "valid", client_ca=ca))
    ports["mtlsraw"] = mtls_raw.port
    ports["mtlssync"] = start_sync_server(make_ctx(certs, "valid", client_ca=ca))
    stall = StallServer()
    ports["stall"] = stall.port

    print(json.dumps(ports), flush=True)

    if args.watch_stdin:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_stdin():
            try:
                data = os.read(sys.stdin.fileno(), 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sys.stdin.fileno())
                done.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        await done.wait()
    else:
        await asyncio.Future()
    for s in servers:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--certs", required=True)
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="tls_server %(asctime)s %(levelname)s %(name)s: %(message)s")
    # failed handshakes are the point of most cases: keep the log short
    logging.getLogger("websockets").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    log.info("websockets %s, %s", websockets.__version__, ssl.OPENSSL_VERSION)
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
