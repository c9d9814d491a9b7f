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
        PJWS_UNDER_VALGRIND=1                      under valgrind (timing cases
                                                   then print SKIPPED)
        PJWS_TEST_TMPDIR                           a scratch directory
  4. runs the examples (echo_client, audio_stream) against the local server
     and checks their output;
  5. prints each failing case and ends with one line:
        "<P> passed, <F> failed, <S> skipped"
     exiting non-zero if any case failed or a binary crashed or timed out.

A test binary prints one line per case: "ok - <name>",
"not ok - <name>: <why>" or "SKIPPED - <name>: <why>"; lines starting with
"#" are diagnostics. It exits 0 only if no case failed.
"""

import argparse
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"
SUPPRESSIONS = HERE / "valgrind.supp"
OWN_RUNNER = {"test_tls", "test_conformance"}

VALGRIND_ARGS = [
    "valgrind",
    "--error-exitcode=99",
    "--leak-check=full",
    "--show-leak-kinds=definite,indirect,possible",
    "--errors-for-leak-kinds=definite,indirect,possible",
    "--num-callers=40",
    "--gen-suppressions=all",
]
VALGRIND_ERROR_EXIT = 99


# ---------------------------------------------------------------------------
# Results

class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.passed = 0
        self.failed: list[str] = []
        self.skipped = 0

    def ok(self, n=1):
        with self.lock:
            self.passed += n

    def fail(self, text):
        with self.lock:
            self.failed.append(text)

    def skip(self, n=1):
        with self.lock:
            self.skipped += n


def signame(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return "signal %d" % -rc


# ---------------------------------------------------------------------------
# Peers

class Server:
    def __init__(self, name, argv, logdir):
        self.name = name
        self.log_path = logdir / ("%s.log" % name)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=str(HERE))
        self.info = self._read_info(20)

    def _read_info(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.stop()
            raise RuntimeError("%s did not report its port within %d s (see %s)"
                               % (self.name, timeout, self.log_path))
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("%s exited at startup (see %s)" % (self.name, self.log_path))
        return json.loads(line)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.log.close()


def refused_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class BlackHole:
    """A loopback address where SYNs are dropped: a listener with listen(0)
    whose accept queue is filled with connections nobody accepts (Linux
    drops SYNs while the accept queue is full)."""

    def __init__(self):
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
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        _, w, _ = select.select([], [s], [], timeout)
        done = bool(w) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        if done:
            self.sockets.append(s)   # keep it: it occupies the accept queue
        else:
            s.close()
        return done

    def _setup(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind(("127.0.0.1", 0))
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
        return None if self.reason else "ws://127.0.0.1:%d" % self.port

    def close(self):
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        self.sockets = []


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

CASE_RE = re.compile(r"^(ok|not ok|SKIPPED) - (.*)$")


def run_process(argv, env, timeout, log_path):
    """Runs argv in its own process group; returns (rc, output, timed_out, seconds)."""
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        chunks = []

        def reader():
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                chunks.append(chunk)
                log.write(chunk)
                log.flush()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        th.join(5)
    out = b"".join(chunks).decode("utf-8", "replace")
    return proc.returncode, out, timed_out, time.monotonic() - t0


def valgrind_argv(args, log_path):
    supp = [SUPPRESSIONS] + [p.resolve() for p in args.suppressions]
    return VALGRIND_ARGS + ["--suppressions=%s" % p for p in supp] + ["--log-file=%s" % log_path]


ERROR_HEADS = ("Invalid ", "Conditional jump", "Use of uninitialised", "Syscall param", "Mismatched free",
               "Source and destination overlap", "Argument ", "Jump to the invalid", "Process terminating")


def valgrind_summary(log_path: Path, frames=10, max_blocks=6):
    """The error reports of a valgrind log, each cut to its first frames."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "    (no valgrind log)"
    body = [re.sub(r"^==\d+== ?", "", l) for l in text.splitlines() if l.startswith("==")]
    blocks, cur = [], []
    for l in body + [""]:
        if l.strip():
            cur.append(l)
        elif cur:
            blocks.append(cur)
            cur = []
    out = []
    shown = 0
    for b in blocks:
        head = b[0]
        if head.startswith(ERROR_HEADS) or re.search(r"bytes in \d+ blocks are (definitely|indirectly|possibly)", head):
            if shown < max_blocks:
                out.extend("    | " + l for l in b[:frames + 1])
                if len(b) > frames + 1:
                    out.append("    |    ... (%d more frames)" % (len(b) - frames - 1))
            shown += 1
    if shown > max_blocks:
        out.append("    | ... %d more error reports" % (shown - max_blocks))
    out.extend("    | " + l for l in body if l.startswith("ERROR SUMMARY"))
    out.append("    | full log: %s" % log_path)
    return "\n".join(out)


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
        argv = valgrind_argv(args, vg_log) + argv
        env["PJWS_UNDER_VALGRIND"] = "1"
        timeout = args.vg_timeout
    rc, out, timed_out, secs = run_process(argv, env, timeout, log_path)

    n_ok = n_fail = n_skip = 0
    lines = []
    last_started = None
    for line in out.splitlines():
        if line.startswith("# running "):
            last_started = line[len("# running "):]
            continue
        m = CASE_RE.match(line)
        if not m:
            continue
        kind, rest = m.groups()
        if kind == "ok":
            n_ok += 1
            last_started = None
        elif kind == "not ok":
            n_fail += 1
            res.fail("%s: %s" % (label, rest))
            lines.append("    not ok - %s" % rest)
            last_started = None
        else:
            n_skip += 1
            lines.append("    SKIPPED - %s" % rest)
            last_started = None
    res.ok(n_ok)
    res.skip(n_skip)

    problems = []
    if timed_out:
        problems.append("timed out after %d s%s" % (timeout, "; case running: %s" % last_started
                                                     if last_started else ""))
    elif vg and rc == VALGRIND_ERROR_EXIT:
        problems.append("valgrind reported errors (log: %s)" % vg_log)
    elif rc < 0:
        problems.append("crashed with %s%s" % (signame(rc), "; case running: %s" % last_started
                                                if last_started else ""))
    elif rc != 0 and n_fail == 0:
        problems.append("exited with status %d but reported no failing case" % rc)
    elif rc == 0 and n_fail:
        problems.append("exited 0 although %d case(s) failed" % n_fail)
    if n_ok + n_fail + n_skip == 0 and not problems:
        problems.append("reported no test case")
    for p in problems:
        res.fail("%s: %s" % (label, p))
        lines.append("    FAILED: %s" % p)
        n_fail += 1

    with out_lock:
        print("%-28s %4d passed %3d failed %3d skipped %8.1f s" % (label, n_ok, n_fail, n_skip, secs),
              flush=True)
        for l in lines:
            print(l)
        if vg and rc == VALGRIND_ERROR_EXIT:
            print(valgrind_summary(vg_log))
        if (problems or (n_fail and args.verbose)) and not vg:
            tail = "\n".join(out.splitlines()[-15:])
            print("    --- last output lines (%s) ---\n%s" % (log_path, tail))
        sys.stdout.flush()


# ---------------------------------------------------------------------------
# Examples

def run_examples(exdir: Path, env, args, res: Results, logdir: Path, tmpdir: Path, vg: bool, out_lock):
    audio_wav = tmpdir / "tone.wav"
    audio_pcm = tmpdir / "tone.pcm"
    nbytes = make_wav(audio_wav)
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
            run_argv = valgrind_argv(args, vg_log) + run_argv
            timeout = args.vg_timeout
        log_path = logdir / ("example.%s.%d%s.out" % (prog, labels.index(label), ".valgrind" if vg else ""))
        rc, out, timed_out, secs = run_process(run_argv, cenv, timeout, log_path)
        why = None
        if timed_out:
            why = "timed out after %d s" % timeout
        elif rc < 0:
            why = "crashed with %s" % signame(rc)
        elif vg and rc == VALGRIND_ERROR_EXIT:
            why = "valgrind reported errors (log: %s)" % vg_log
        else:
            why = check(out, rc)
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
        print("no test binaries found in %s%s" % (args.bindir, " matching --only" if args.only else ""))
        print("0 passed, 1 failed, 0 skipped")
        return 1
    if args.valgrind and not shutil.which("valgrind"):
        print("valgrind not found")
        print("0 passed, 1 failed, 0 skipped")
        return 1

    servers = []
    blackhole = None
    t_start = time.monotonic()
    try:
        ws = Server("ws_server", [sys.executable, str(SERVERS / "ws_server.py"), "--watch-stdin"], logdir)
        servers.append(ws)
        raw = Server("raw_server", [sys.executable, str(SERVERS / "raw_server.py"), "--watch-stdin"], logdir)
        servers.append(raw)
        blackhole = BlackHole()

        env = dict(os.environ)
        for k in ("WS_ECHO_URL", "WS_ECHO6_URL", "WS_RAW_URL", "WS_BLACKHOLE_URL", "WS_BLACKHOLE_SKIP",
                  "WS_REFUSED_URL", "PJWS_UNDER_VALGRIND"):
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
        env["PJWS_TEST_TMPDIR"] = str(tmpdir)
        for k in ("WS_ECHO_URL", "WS_ECHO6_URL", "WS_RAW_URL", "WS_BLACKHOLE_URL", "WS_BLACKHOLE_SKIP",
                  "WS_REFUSED_URL"):
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
        shutil.rmtree(tmpdir, ignore_errors=True)

    print("== total %.1f s ==" % (time.monotonic() - t_start))
    if res.failed:
        print("Failures:")
        for f in res.failed:
            print("  " + f)
    print("%d passed, %d failed, %d skipped" % (res.passed, len(res.failed), res.skipped))
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
