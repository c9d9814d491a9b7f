#!/usr/bin/env python3
"""Runs libpjwebsock's wss:// (TLS) C test against real TLS servers.

    .venv/bin/python tests/tls/run.py --bin build/c-tests/test_tls [--valgrind]
                                      [--both] [--keep] [-v]

  1. makes a throwaway PKI in a temporary directory (tests/tls/certs.py:
     CA, valid / wrong-host / expired / self-signed / IP-only server
     certificates, client certificates, a hashed CA directory);
  2. starts tests/tls/tls_server.py (websockets + ssl on 127.0.0.1, one
     port per variant, a raw TLS peer and a silent TCP listener);
  3. runs the test binary natively, or with --valgrind under valgrind only
     (memcheck, leaks are errors, PJWS_UNDER_VALGRIND=1), or with --both
     natively and then under valgrind; environment passed:
        TLS_CERTDIR, TLS_CLIENT_PASSWORD, TLS_PORT_<NAME>, TLS_PIN_<NAME>
  4. prints every case line of the binary and ends with
        "N passed, N failed" (plus ", N skipped" when some were skipped);
     exits non-zero on any failure, crash, timeout or valgrind error.

Logs (binary output, valgrind log, server log) go to build/test-logs/tls/
by default (--logdir).
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SUPPRESSIONS = ROOT / "tests" / "valgrind.supp"
sys.path.insert(0, str(HERE))
import certs  # noqa: E402

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
CASE_RE = re.compile(r"^(ok|not ok|SKIPPED) - (.*)$")


class Server:
    def __init__(self, argv, log_path: Path, timeout=20):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            self.stop()
            raise RuntimeError("tls_server.py did not start (see %s)" % log_path)
        self.ports = json.loads(line)

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


def run_process(argv, env, timeout, log_path, echo):
    """Runs argv in its own process group, echoing its output lines through
    echo(line). Returns (rc, output, timed_out, seconds)."""
    t0 = time.monotonic()
    chunks = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

        def reader():
            for line in iter(proc.stdout.readline, b""):
                chunks.append(line)
                log.write(line)
                log.flush()
                echo(line.decode("utf-8", "replace").rstrip("\n"))

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
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace"), timed_out, time.monotonic() - t0


def valgrind_summary(log_path: Path, max_lines=100):
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no valgrind log)"
    lines = [l for l in text.splitlines() if l.startswith("==")]
    if len(lines) > max_lines:
        lines = lines[-max_lines:]
    return "\n".join(lines)


def signame(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return "signal %d" % -rc


def run_pass(binary: Path, env, vg: bool, args, logdir: Path, counts):
    label = "valgrind" if vg else "native"
    env = dict(env)
    argv = [str(binary)]
    timeout = args.timeout
    vg_log = logdir / "test_tls.valgrind.log"
    if vg:
        supp = [SUPPRESSIONS] + [Path(p).resolve() for p in args.suppressions]
        argv = VALGRIND_ARGS + ["--suppressions=%s" % p for p in supp] + ["--log-file=%s" % vg_log] + argv
        env["PJWS_UNDER_VALGRIND"] = "1"
        timeout = args.vg_timeout
    else:
        env.pop("PJWS_UNDER_VALGRIND", None)
    print("== test_tls (%s) ==" % label, flush=True)
    last = [None]

    def echo(line):
        m = CASE_RE.match(line)
        if line.startswith("# running "):
            last[0] = line[len("# running "):]
            if args.verbose:
                print(line, flush=True)
            return
        if m:
            last[0] = None
            kind = m.group(1)
            if kind == "ok":
                counts["passed"] += 1
            elif kind == "not ok":
                counts["failed"] += 1
                counts["failures"].append("[%s] %s" % (label, m.group(2)))
            else:
                counts["skipped"] += 1
            print(line, flush=True)
        elif line.startswith("# memory") or args.verbose:
            print(line, flush=True)

    rc, out, timed_out, secs = run_process(argv, env, timeout, logdir / ("test_tls.%s.out" % label), echo)
    problem = None
    if timed_out:
        problem = "timed out after %d s%s" % (timeout, "; case running: %s" % last[0] if last[0] else "")
    elif vg and rc == VALGRIND_ERROR_EXIT:
        problem = "valgrind reported errors (log: %s)" % vg_log
    elif rc < 0:
        problem = "crashed with %s%s" % (signame(rc), "; case running: %s" % last[0] if last[0] else "")
    elif rc != 0 and not any(CASE_RE.match(l) and l.startswith("not ok") for l in out.splitlines()):
        problem = "exited with status %d but reported no failing case" % rc
    if problem:
        counts["failed"] += 1
        counts["failures"].append("[%s] test_tls: %s" % (label, problem))
        print("not ok - test_tls (%s): %s" % (label, problem), flush=True)
        if vg and rc == VALGRIND_ERROR_EXIT:
            print(valgrind_summary(vg_log))
    print("== test_tls (%s): %.1f s ==" % (label, secs), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "build" / "c-tests" / "test_tls"), type=Path)
    ap.add_argument("--valgrind", action="store_true", help="run under valgrind (only)")
    ap.add_argument("--both", action="store_true", help="run natively, then under valgrind")
    ap.add_argument("--timeout", type=int, default=240, help="native run limit (s)")
    ap.add_argument("--vg-timeout", type=int, default=1500, help="valgrind run limit (s)")
    ap.add_argument("--suppressions", action="append", default=[],
                    help="extra valgrind suppression file (repeatable)")
    ap.add_argument("--logdir", type=Path, default=ROOT / "build" / "test-logs" / "tls")
    ap.add_argument("--keep", action="store_true", help="keep the certificate directory")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the binary's diagnostics too")
    args = ap.parse_args()

    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    args.logdir.mkdir(parents=True, exist_ok=True)
    if not args.bin.is_file():
        print("not ok - test_tls: %s is not built (make c-tests)" % args.bin)
        print("0 passed, 1 failed")
        return 1
    if (args.valgrind or args.both) and not shutil.which("valgrind"):
        print("not ok - test_tls: valgrind not found")
        print("0 passed, 1 failed")
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="pjws-tls-"))
    server = None
    t0 = time.monotonic()
    try:
        info = certs.make_certs(tmp / "pki")
        server = Server([sys.executable, str(HERE / "tls_server.py"), "--certs", info["dir"], "--watch-stdin"]
                        + (["-v"] if args.verbose else []), args.logdir / "tls_server.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TLS_PORT_", "TLS_PIN_"))}
        env["TLS_CERTDIR"] = info["dir"]
        env["TLS_CLIENT_PASSWORD"] = info["client_password"]
        for name, port in server.ports.items():
            if port:
                env["TLS_PORT_%s" % name.upper()] = str(port)
        env["TLS_PORT_REFUSED"] = str(refused_port())
        for name, pin in info["pins"].items():
            env["TLS_PIN_%s" % name.upper()] = pin
        env["PJWS_TEST_TMPDIR"] = str(tmp)
        print("# certificates: %s; server ports: %s" % (info["dir"], json.dumps(server.ports)), flush=True)
        print("# logs: %s" % args.logdir, flush=True)

        passes = [False, True] if args.both else [args.valgrind]
        for vg in passes:
            run_pass(args.bin, env, vg, args, args.logdir, counts)
            if not server.alive():
                counts["failed"] += 1
                counts["failures"].append("tls_server.py died (see %s)" % server.log_path)
    except (RuntimeError, OSError) as e:
        counts["failed"] += 1
        counts["failures"].append(str(e))
        print("not ok - setup: %s" % e)
    finally:
        if server:
            server.stop()
        if args.keep:
            print("# kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print("== total %.1f s ==" % (time.monotonic() - t0))
    if counts["failures"]:
        print("Failures:")
        for f in counts["failures"]:
            print("  " + f)
    summary = "%d passed, %d failed" % (counts["passed"], counts["failed"])
    if counts["skipped"]:
        summary += ", %d skipped" % counts["skipped"]
    print(summary, flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
