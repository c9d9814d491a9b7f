#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz corpus (stdlib only).

    python3 fuzz/seeds.py            # (re)writes fuzz/corpus/<target>/seed-*

Input layouts (see fuzz/src/lib.rs):
  frame_decode        raw bytes (a frame header, then anything)
  handshake_response  [offer selector, split seed] + response bytes
                      (offers: 0 none, 1 "chat", 2 "chat, superchat",
                      3 "a,b , c"; key = RFC 6455 sample nonce)
  conn_state          [config, split seed] + server byte stream
                      (config bits 0-2: max message size index into
                      [0, 1, 16, 125, 126, 1000, 65536, 1 MiB]; bit 3: local
                      close before the first byte; bit 4: local close at the
                      middle split point)
  url_parse           the URL bytes
  utf8_stream         [split seed] + bytes
Split seed 0 = one piece; odd seeds = mostly 1-3 byte pieces.
Files found by the fuzzer are kept next to these (named by content hash).
"""

import os
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def frame(op, payload=b"", fin=True, rsv=0, mask=None, length=None, form=None):
    """A server frame; form forces the length encoding (7, 16 or 64)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    m = 0x80 if mask else 0
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7:
        h = bytes([b0, m | n])
    elif form == 16:
        h = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        h = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if mask:
        h += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return h + payload


def close(code=None, reason=b""):
    return frame(8, b"" if code is None else struct.pack("!H", code) + reason)


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + name)).write_bytes(data)


def frames_seeds():
    t, b, c, ping, pong = 1, 2, 0, 9, 10
    return {
        "text-hello": frame(t, b"Hello"),
        "rfc-masked-hello": bytes.fromhex("818537fa213d7f9f4d5158"),
        "rfc-fragmented": frame(t, b"Hel", fin=False) + frame(c, b"lo"),
        "ping-hello": frame(ping, b"Hello"),
        "pong-hello": frame(pong, b"Hello"),
        "bin-256": frame(b, bytes(range(256))),
        "bin-64k-header": frame(b, b"", length=65536),
        "len16-nonminimal": frame(t, b"abc", form=16),
        "len64-nonminimal": frame(t, b"abc", form=64),
        "len64-topbit": bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        "len64-max": bytes([0x82, 0x7F]) + b"\xff" * 8,
        "rsv1": frame(t, b"x", rsv=4),
        "rsv-all": frame(t, b"x", rsv=7),
        "opcode3": frame(3, b"x"),
        "opcode15": frame(15),
        "masked-ping": frame(ping, b"hi", mask=b"\x01\x02\x03\x04"),
        "ping-125": frame(ping, b"p" * 125),
        "ping-126": frame(ping, b"p" * 126),
        "ping-nonminimal": frame(ping, b"abc", form=16),
        "ping-fragmented": frame(ping, b"x", fin=False),
        "close-1000": close(1000, b"bye"),
        "close-empty": close(),
        "close-1byte": frame(8, b"\x03"),
        "close-1005": close(1005),
        "close-bad-utf8": close(1000, b"\xff"),
        "cont-first": frame(c, b"x"),
        "text-then-text": frame(t, b"a", fin=False) + frame(t, b"b"),
        "zero-fragments": frame(t, b"", fin=False) + frame(c, b"", fin=False) + frame(c, b""),
        "utf8-split": frame(t, "€".encode()[:1], fin=False) + frame(c, "€".encode()[1:]),
        "utf8-invalid-first-frag": frame(t, b"ab\xc0\xaf", fin=False),
        "utf8-surrogate": frame(t, b"\xed\xa0\x80"),
        "utf8-truncated": frame(t, b"\xe2\x82"),
        "interleaved": frame(t, b"fra", fin=False) + frame(ping, b"1") + frame(c, b"gm", fin=False)
        + frame(pong, b"u") + frame(c, b"ent"),
        "close-then-text": close(1001) + frame(t, b"late"),
        "many-small": b"".join(frame(t, bytes([0x41 + i])) for i in range(20)),
        "header-only-text-1000": frame(t, b"", length=1000),
    }


def conn_seeds(fr):
    out = {}
    cfgs = [(7, 0), (7, 1), (6, 2), (2, 3), (0x0F, 1), (0x17, 5)]
    for i, (name, data) in enumerate(sorted(fr.items())):
        cfg, seed = cfgs[i % len(cfgs)]
        out["%s-c%02x-s%d" % (name, cfg, seed)] = bytes([cfg, seed]) + data
    # A few more with a small maximum and local closes.
    out["too-big-16"] = bytes([2, 1]) + frame(1, b"x" * 17)
    out["too-big-frag"] = bytes([2, 3]) + frame(2, b"x" * 10, fin=False) + frame(0, b"y" * 7)
    out["max-0-empty"] = bytes([0, 1]) + frame(1, b"") + frame(2, b"")
    out["local-close-mid"] = bytes([0x17, 7]) + frame(9, b"a") + frame(1, b"m") + frame(9, b"b") + close(1000)
    out["local-close-start-ping"] = bytes([0x0F, 0]) + frame(9, b"a") + frame(1, b"after") + close()
    return out


def handshake_seeds():
    base = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n" % ACCEPT)
    resp = {
        "ok": base + "\r\n",
        "ok-proto-chat": base + "Sec-WebSocket-Protocol: chat\r\n\r\n",
        "ok-proto-superchat": base + "Sec-WebSocket-Protocol: superchat\r\n\r\n",
        "bad-proto": base + "Sec-WebSocket-Protocol: other\r\n\r\n",
        "proto-list": base + "Sec-WebSocket-Protocol: chat, superchat\r\n\r\n",
        "extension": base + "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        "status-401": "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 3\r\n\r\nno!",
        "status-429": "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\n\r\n",
        "status-101-http10": base.replace("HTTP/1.1", "HTTP/1.0") + "\r\n",
        "no-upgrade": base.replace("Upgrade: websocket\r\n", "") + "\r\n",
        "upgrade-case": base.replace("websocket", "WebSocket") + "\r\n",
        "connection-list": base.replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE") + "\r\n",
        "connection-bad": base.replace("Connection: Upgrade", "Connection: keep-alive") + "\r\n",
        "accept-bad": base.replace(ACCEPT, "dGhlIHNhbXBsZSBub25jZQ==") + "\r\n",
        "accept-twice": base + "Sec-WebSocket-Accept: %s\r\n\r\n" % ACCEPT,
        "lf-only": base.replace("\r\n", "\n") + "\n",
        "with-frame": base + "\r\n\x81\x05Hello",
        "garbage": "SSH-2.0-OpenSSH_9.0\r\n\r\n",
        "incomplete": base,
        "many-headers": base + "".join("X-H%d: v\r\n" % i for i in range(40)) + "\r\n",
        "obs-fold": base + "X-Fold: a\r\n b\r\n\r\n",
    }
    out = {}
    for i, (name, r) in enumerate(sorted(resp.items())):
        sel = 2 if "proto" in name else i % 4
        out[name] = bytes([sel, i % 5]) + r.encode("latin-1")
    out["huge"] = bytes([0, 0]) + (base + "X-Big: " + "a" * 17000 + "\r\n\r\n").encode()
    return out


def url_seeds():
    urls = [
        "ws://example.com", "ws://example.com/", "wss://example.com:8443/path?q=1",
        "ws://127.0.0.1:9000/case/x", "ws://[::1]:8080/", "wss://[2001:db8::1]/a",
        "WS://Example.COM:80/", "ws://host/?only=query", "ws://host?q", "ws://h:0/",
        "ws://h:65536/", "ws://user@h/", "ws://h/#frag", "http://h/", "ws://[::1/",
        "ws://h:+80/", "ws:///path", "ws://a%20b/", "wss://h:443", "ws://h:80",
    ]
    return {"u%02d" % i: u.encode() for i, u in enumerate(urls)}


def utf8_seeds():
    cases = {
        "ascii": b"Hello, world",
        "mixed": "κόσμε €𝄞 ü".encode(),
        "max": "\U0010ffff".encode(),
        "above-max": b"\xf4\x90\x80\x80",
        "f5": b"\xf5\x80\x80\x80",
        "overlong2": b"\xc0\xaf",
        "overlong3": b"\xe0\x80\xaf",
        "overlong4": b"\xf0\x80\x80\xaf",
        "surrogate-lo": b"\xed\xa0\x80",
        "surrogate-hi": b"\xed\xbf\xbf",
        "lone-cont": b"a\x80b",
        "truncated": b"\xe2\x82",
        "truncated-then-ascii": b"\xe2\x82A",
        "fe-ff": b"\xfe\xff",
        "long-ascii-then-bad": b"a" * 70 + b"\xff",
        "boundaries": "\u007f\u0080\u07ff\u0800\uffff\U00010000\ud7ff\ue000".encode("utf-8", "surrogatepass"),
    }
    out = {}
    for i, (name, data) in enumerate(sorted(cases.items())):
        out["%s-s%d" % (name, i % 4)] = bytes([i % 4]) + data
    return out


def main():
    fr = frames_seeds()
    sets = {
        "frame_decode": fr,
        "conn_state": conn_seeds(fr),
        "handshake_response": handshake_seeds(),
        "url_parse": url_seeds(),
        "utf8_stream": utf8_seeds(),
    }
    for target, seeds in sets.items():
        d = HERE / "corpus" / target
        if d.is_dir():
            for p in d.glob("seed-*"):
                p.unlink()
        for name, data in seeds.items():
            write(target, name, data)
        print("%-20s %3d seeds" % (target, len(seeds)))


if __name__ == "__main__":
    main()
