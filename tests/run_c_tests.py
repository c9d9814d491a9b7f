#!/usr/bin/env python3
"""Runs libpjwebsock's C test programs and C examples against local peers.

    .venv/bin/python tests/run_c_tests.py --bindir build/c-tests \\
        --exdir build/examples [--valgrind] [--only NAME[,NAME]] [--jobs N]

What it does:
  1. starts the test peers on 127.0.0.1 with ephemeral ports:
     tests/servers/ws_server.py (a real WebSocket server, also on ::1 when
     available) and tests/servers/raw_server.py (scripted raw TCP);
  2. prepares a black-holed address (a listening socket whose accept queue
     is full, so SYNs are dropped) and a refused port;
  3. runs every build/c-tests/test_* binary natively, and with --valgrind
     additionally under valgrind (memcheck, leaks are errors), passing the
     URLs in the environment:
        WS_ECHO_URL       ws://127.0.0.1:PORT      ws_server.py
        WS_ECHO6_URL      ws://[::1]:PORT          ws_server.py on ::1 (unset without IPv6)
        WS_RAW_URL        ws://127.0.0.1:PORT      raw_server.py
        WS_BLACKHOLE_URL  ws://127.0.0.1:PORT      SYNs dropped (unset if that
                                                   cannot be arranged; then
                                                   WS_BLACKHOLE_SKIP says why)
        WS_REFUSED_URL    ws://127.0.0.1:PORT      nothing listens there
        WS_DUAL_URL       ws://localhost:PORT      [::1]:PORT black-holed (as above),
                                                   127.0.0.1:PORT a second
                                                   ws_server.py (unset if that
                                                   cannot be arranged; then
                                                   WS_DUAL_SKIP says why)
        PJWS_UNDER_VALGRIND=1                      under valgrind (timing cases
                                                   then print SKIPPED)
        PJWS_TEST_TMPDIR                           a scratch directory
  4. runs the examples (echo_client, audio_stream) against the local server
     and checks their output (for audio_stream also the verdict of
     ws_server.py's /stt on the frame sizes: 640 bytes, the last shorter);
  5. prints each failing case and ends with one line:
        "<P> passed, <F> failed, <S> skipped"
     exiting non-zero if any case failed or a binary crashed or timed out.

A test binary prints one line per case: "ok - <name>",
"not ok - <name>: <why>" or "SKIPPED - <name>: <why>"; lines starting with
"#" are diagnostics. It exits 0 only if no case failed.
"""

import argparse
import math
import os
import re
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import (VALGRIND_ERROR_EXIT, Results, Server, abnormal_end, give_up, refused_port,
                     run_process, sanitizer_excerpt, tally_run, valgrind_argv, valgrind_summary)

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"
OWN_RUNNER = {"test_tls", "test_conformance"}


# ---------------------------------------------------------------------------
# Peers

class BlackHole:
    """A loopback address where SYNs are dropped: a listener with listen(0)
    whose accept queue is filled with connections nobody accepts (Linux
    drops SYNs while the accept queue is full). host is 127.0.0.1 or ::1."""

    def __init__(self, host="127.0.0.1"):
        self.host = host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sockets = []
        self.port = None
        self.reason = None
        try:
            self._setup()
        except OSError as e:
            self.reason = "setup failed: %s" % e
            self.close()

    def _probe(self, timeout):
        """Non-blocking connect; True if it completed within timeout."""
        s = socket.socket(self.family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((self.host, self.port))
        _, w, _ = select.select([], [s], [], timeout)
        done = bool(w) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        if done:
            self.sockets.append(s)   # keep it: it occupies the accept queue
        else:
            s.close()
        return done

    def _setup(self):
        ls = socket.socket(self.family, socket.SOCK_STREAM)
        ls.bind((self.host, 0))
        ls.listen(0)
        self.sockets.append(ls)
        self.port = ls.getsockname()[1]
        for _ in range(8):
            if not self._probe(0.3):
                # confirm with a second probe
                if not self._probe(0.3):
                    return
        self.reason = "connects to a full accept queue still complete on this host"
        self.close()

    @property
    def url(self):
        if self.reason:
            return None
        return "ws://%s:%d" % ("[%s]" % self.host if self.family == socket.AF_INET6 else self.host, self.port)

    def close(self):
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        self.sockets = []


def start_dual(logdir: Path, servers: list):
    """A port P with [::1]:P black-holed and a ws_server.py on 127.0.0.1:P,
    so that a name resolving to ::1 first (localhost on many hosts) needs
    the second address. Returns (BlackHole or None, url or None, reason)."""
    hole = BlackHole("::1")
    if hole.reason:
        return None, None, "no black hole on ::1: %s" % hole.reason
    try:
        srv = Server("ws_server_dual", [sys.executable, str(SERVERS / "ws_server.py"), "--watch-stdin",
                                        "--port", str(hole.port), "--no-ipv6"],
                     logdir / "ws_server_dual.log", cwd=HERE)
    except RuntimeError as e:
        hole.close()
        return None, None, "no ws_server.py on 127.0.0.1:%d: %s" % (hole.port, e)
    servers.append(srv)
    return hole, "ws://localhost:%d" % hole.port, None


def make_wav(path: Path, seconds=1.0, rate=16000, freq=440.0):
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate)))
                      for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return len(frames)


# ---------------------------------------------------------------------------
# Running binaries

def run_test_binary(path: Path, env, args, res: Results, logdir: Path, vg: bool, out_lock):
    name = path.name
    label = name + (" [valgrind]" if vg else "")
    log_path = logdir / ("%s%s.out" % (name, ".valgrind" if vg else ""))
    argv = [str(path)]
    timeout = args.timeout
    env = dict(env)
    vg_log = None
    if vg:
        vg_log = logdir / ("%s.valgrind.log" % name)
        argv = valgrind_argv(vg_log, args.suppressions) + argv
        env["PJWS_UNDER_VALGRIND"] = "1"
        timeout = args.vg_timeout
    rc, out, timed_out, secs = run_process(argv, env, timeout, log_path)
    t = tally_run(label, out, rc, timed_out, timeout, vg_log, res)

    with out_lock:
        print("%-28s %4d passed %3d failed %3d skipped %8.1f s" % (label, t.ok, t.failed, t.skipped, secs),
              flush=True)
        for l in t.lines:
            print(l)
        if vg and rc == VALGRIND_ERROR_EXIT:
            print(valgrind_summary(vg_log))
        if (t.problems or (t.failed and args.verbose)) and not vg:
            report = sanitizer_excerpt(out)
            if report:
                print("    --- sanitizer report (%s) ---\n%s" % (log_path, report))
            else:
                print("    --- last output lines (%s) ---\n%s" % (log_path, "\n".join(out.splitlines()[-15:])))
        sys.stdout.flush()


# ---------------------------------------------------------------------------
# Examples

def run_examples(exdir: Path, env, args, res: Results, logdir: Path, tmpdir: Path, vg: bool, out_lock):
    audio_wav = tmpdir / "tone.wav"
    audio_pcm = tmpdir / "tone.pcm"
    # 1.01 s: 50 frames of 640 bytes and a last one of 320
    nbytes = make_wav(audio_wav, seconds=1.01)
    with wave.open(str(audio_wav), "rb") as w:
        audio_pcm.write_bytes(w.readframes(w.getnframes()))
    echo = env["WS_ECHO_URL"]

    def check_echo(out, rc):
        msgs = ["hello", "second message", "\u00fcn\u00efc\u00f6d\u00e9 \u20ac"]
        missing = [m for m in msgs if m not in out]
        if rc != 0:
            return "exit status %d" % rc
        if missing:
            return "echoes missing from output: %r" % missing
        return None

    def check_stt(out, rc):
        if rc != 0:
            return "exit status %d" % rc
        final = '"type":"final","bytes":%d' % nbytes
        if final not in out:
            return "output lacks the final message with %s" % final
        partials = len(re.findall(r'"type":"partial"', out))
        if partials < 4:
            return "only %d partial results printed (want 5)" % partials
        # the server checks that every binary message but the last has
        # exactly 640 bytes (20 ms of audio)
        sizes = re.search(r'"frame_sizes":"([^"]*)"', out)
        if not sizes:
            return "the final message lacks the server's frame size verdict"
        if sizes.group(1) != "ok":
            return "audio frames: %s" % sizes.group(1)
        return None

    def check_stt_denied(out, rc):
        if rc == 0:
            return "exit status 0 although the server refused the handshake (401)"
        if "401" not in out and "status" not in out.lower():
            return "output does not explain the refusal (no '401')"
        return None

    no_token_env = {k: v for k, v in env.items() if k != "PJWS_TOKEN"}
    token_env = dict(no_token_env, PJWS_TOKEN="env-token-456")
    cases = [
        ("echo_client", [echo + "/", "hello", "second message", "\u00fcn\u00efc\u00f6d\u00e9 \u20ac"], env,
         check_echo),
        ("audio_stream", [echo + "/stt", str(audio_wav), "--token", "test-token-123"], no_token_env, check_stt),
        ("audio_stream", [echo + "/stt", str(audio_pcm)], token_env, check_stt),
        ("audio_stream", [echo + "/stt", str(audio_wav)], no_token_env, check_stt_denied),
    ]
    labels = ["echo_client: three messages echoed",
              "audio_stream: WAV with --token, final byte count",
              "audio_stream: raw PCM with PJWS_TOKEN, final byte count",
              "audio_stream: no token -> refused (non-zero exit)"]
    for (prog, argv, cenv, check), label in zip(cases, labels):
        if args.only and not any(o in (prog, "examples") or o in label for o in args.only):
            continue
        if vg and "refused" in label:
            continue
        path = exdir / prog
        full = label + (" [valgrind]" if vg else "")
        if not path.exists():
            res.fail("example %s: %s not built" % (full, path))
            with out_lock:
                print("%-60s FAILED (not built)" % full)
            continue
        run_argv = [str(path)] + argv
        timeout = 60
        vg_log = None
        if vg:
            vg_log = logdir / ("%s.%d.valgrind.log" % (prog, labels.index(label)))
            run_argv = valgrind_argv(vg_log, args.suppressions) + run_argv
            timeout = args.vg_timeout
        log_path = logdir / ("example.%s.%d%s.out" % (prog, labels.index(label), ".valgrind" if vg else ""))
        rc, out, timed_out, secs = run_process(run_argv, cenv, timeout, log_path)
        why = abnormal_end(rc, timed_out, timeout, vg_log) or check(out, rc)
        with out_lock:
            if why:
                res.fail("example %s: %s" % (full, why))
                print("%-60s FAILED %6.1f s: %s" % (full, secs, why))
                print("    --- output (%s) ---\n%s" % (log_path, "\n".join(out.splitlines()[-20:])))
                if vg_log and rc == VALGRIND_ERROR_EXIT:
                    print(valgrind_summary(vg_log))
            else:
                res.ok()
                print("%-60s ok     %6.1f s" % (full, secs))


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="Run libpjwebsock's C tests and examples.")
    ap.add_argument("--bindir", default="build/c-tests", type=Path)
    ap.add_argument("--exdir", default=None, type=Path)
    ap.add_argument("--valgrind", action="store_true",
                    help="also run everything under valgrind (after the native run)")
    ap.add_argument("--valgrind-only", action="store_true", help="skip the native run")
    ap.add_argument("--only", action="append", default=[],
                    help="run only these binaries/examples (name or comma list; repeatable)")
    ap.add_argument("--timeout", type=int, default=300, help="per binary, native (s)")
    ap.add_argument("--vg-timeout", type=int, default=900, help="per binary, under valgrind (s)")
    ap.add_argument("--jobs", type=int, default=1, help="binaries run in parallel under valgrind")
    ap.add_argument("--suppressions", action="append", default=[], type=Path,
                    help="extra valgrind suppression file (repeatable), besides tests/valgrind.supp")
    ap.add_argument("--logdir", type=Path, default=None,
                    help="where outputs and server logs go (default: BINDIR/../test-logs)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    args.only = [o.strip() for x in args.only for o in x.split(",") if o.strip()]
    if args.valgrind_only:
        args.valgrind = True

    res = Results()
    out_lock = threading.Lock()
    logdir = args.logdir or (args.bindir.resolve().parent / "test-logs")
    logdir.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix="pjws-tests-"))

    binaries = []
    if args.bindir.is_dir():
        # test_tls and test_conformance need their own peers: they have
        # their own runners (tests/tls/run.py, tests/conformance/run.py).
        binaries = sorted(p for p in args.bindir.iterdir()
                          if p.name.startswith("test_") and p.is_file() and os.access(p, os.X_OK)
                          and p.name not in OWN_RUNNER)
    if args.only:
        binaries = [b for b in binaries if b.name in args.only or b.name.replace("test_", "") in args.only]
    run_ex = args.exdir is not None and (not args.only or any(
        o in ("examples", "echo_client", "audio_stream") for o in args.only))
    if not binaries and not run_ex:
        return give_up("no test binaries found in %s%s" % (args.bindir, " matching --only" if args.only else ""))
    if args.valgrind and not shutil.which("valgrind"):
        return give_up("valgrind not found")

    servers = []
    blackhole = None
    hole6 = None
    t_start = time.monotonic()
    try:
        ws = Server("ws_server", [sys.executable, str(SERVERS / "ws_server.py"), "--watch-stdin"],
                    logdir / "ws_server.log", cwd=HERE)
        servers.append(ws)
        raw = Server("raw_server", [sys.executable, str(SERVERS / "raw_server.py"), "--watch-stdin"],
                     logdir / "raw_server.log", cwd=HERE)
        servers.append(raw)
        blackhole = BlackHole()
        hole6, dual_url, dual_skip = start_dual(logdir, servers)

        env = dict(os.environ)
        for k in ("WS_ECHO_URL", "WS_ECHO6_URL", "WS_RAW_URL", "WS_BLACKHOLE_URL", "WS_BLACKHOLE_SKIP",
                  "WS_REFUSED_URL", "WS_DUAL_URL", "WS_DUAL_SKIP", "PJWS_UNDER_VALGRIND"):
            env.pop(k, None)
        env["WS_ECHO_URL"] = "ws://127.0.0.1:%d" % ws.info["port"]
        if ws.info.get("port6"):
            env["WS_ECHO6_URL"] = "ws://[::1]:%d" % ws.info["port6"]
        env["WS_RAW_URL"] = "ws://127.0.0.1:%d" % raw.info["port"]
        if blackhole.url:
            env["WS_BLACKHOLE_URL"] = blackhole.url
        else:
            env["WS_BLACKHOLE_SKIP"] = blackhole.reason
        env["WS_REFUSED_URL"] = "ws://127.0.0.1:%d" % refused_port()
        if dual_url:
            env["WS_DUAL_URL"] = dual_url
        else:
            env["WS_DUAL_SKIP"] = dual_skip
        env["PJWS_TEST_TMPDIR"] = str(tmpdir)
        for k in ("WS_ECHO_URL", "WS_ECHO6_URL", "WS_RAW_URL", "WS_BLACKHOLE_URL", "WS_BLACKHOLE_SKIP",
                  "WS_REFUSED_URL", "WS_DUAL_URL", "WS_DUAL_SKIP"):
            if k in env:
                print("# %s=%s" % (k, env[k]))
        print("# logs: %s" % logdir, flush=True)

        passes = []
        if not args.valgrind_only:
            passes.append(False)
        if args.valgrind:
            passes.append(True)
        for vg in passes:
            print("== %s ==" % ("under valgrind" if vg else "native"), flush=True)
            jobs = max(1, args.jobs) if vg else 1
            if jobs == 1:
                for b in binaries:
                    run_test_binary(b, env, args, res, logdir, vg, out_lock)
            else:
                with ThreadPoolExecutor(jobs) as ex:
                    list(ex.map(lambda b: run_test_binary(b, env, args, res, logdir, vg, out_lock), binaries))
            if run_ex:
                run_examples(args.exdir, env, args, res, logdir, tmpdir, vg, out_lock)
            for s in servers:
                if not s.alive():
                    res.fail("%s died during the run (see %s)" % (s.name, s.log_path))
    except RuntimeError as e:
        res.fail(str(e))
    finally:
        for s in servers:
            s.stop()
        if blackhole:
            blackhole.close()
        if hole6:
            hole6.close()
        shutil.rmtree(tmpdir, ignore_errors=True)

    return res.report(t_start)


if __name__ == "__main__":
    sys.exit(main())
