#!/usr/bin/env python3
"""Runs libpjwebsock's wss:// (TLS) C test against real TLS servers.

    .venv/bin/python tests/tls/run.py --bin build/c-tests/test_tls [--valgrind]
                                      [--both] [--keep] [-v]

  1. makes a throwaway PKI in a temporary directory (tests/tls/certs.py:
     CA, valid / wrong-host / expired / self-signed / IP-only server
     certificates, client certificates, a hashed CA directory);
  2. starts tests/tls/tls_server.py (websockets + ssl on 127.0.0.1, one
     port per variant, websockets' threaded server for mutual TLS, a raw
     TLS peer and a silent TCP listener);
  3. runs the test binary natively, or with --valgrind under valgrind only
     (memcheck, leaks are errors, PJWS_UNDER_VALGRIND=1), or with --both
     natively and then under valgrind; environment passed:
        TLS_CERTDIR, TLS_CLIENT_PASSWORD, TLS_PORT_<NAME>, TLS_PIN_<NAME>,
        PJWS_TEST_TMPDIR
  4. prints every case line of the binary and ends with
        "N passed, N failed" (plus ", N skipped" when some were skipped);
     exits non-zero on any failure, crash, timeout or valgrind error.

Logs (binary output, valgrind log, server log) go to build/test-logs/tls/
by default (--logdir).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import certs  # noqa: E402
from harness import (CASE_RE, RUNNING, VALGRIND_ERROR_EXIT, Results, Server, abnormal_end,  # noqa: E402
                     give_up, refused_port, run_process, sanitizer_excerpt, valgrind_argv)


def valgrind_log_tail(log_path: Path, max_lines=100):
    """The last valgrind lines of its log (not harness.valgrind_summary:
    this runner has always shown the raw tail)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no valgrind log)"
    lines = [l for l in text.splitlines() if l.startswith("==")]
    if len(lines) > max_lines:
        lines = lines[-max_lines:]
    return "\n".join(lines)


def run_pass(binary: Path, env, vg: bool, args, logdir: Path, res: Results):
    label = "valgrind" if vg else "native"
    env = dict(env)
    argv = [str(binary)]
    timeout = args.timeout
    vg_log = logdir / "test_tls.valgrind.log"
    if vg:
        argv = valgrind_argv(vg_log, args.suppressions) + argv
        env["PJWS_UNDER_VALGRIND"] = "1"
        timeout = args.vg_timeout
    else:
        env.pop("PJWS_UNDER_VALGRIND", None)
    print("== test_tls (%s) ==" % label, flush=True)
    last = [None]

    def echo(line):
        m = CASE_RE.match(line)
        if line.startswith(RUNNING):
            last[0] = line[len(RUNNING):]
            if args.verbose:
                print(line, flush=True)
            return
        if m:
            last[0] = None
            kind = m.group(1)
            if kind == "ok":
                res.ok()
            elif kind == "not ok":
                res.fail("[%s] %s" % (label, m.group(2)))
            else:
                res.skip()
            print(line, flush=True)
        elif line.startswith("# memory") or args.verbose:
            print(line, flush=True)

    rc, out, timed_out, secs = run_process(argv, env, timeout, logdir / ("test_tls.%s.out" % label), echo=echo)
    problem = abnormal_end(rc, timed_out, timeout, vg_log if vg else None, last[0], out)
    if not problem and rc != 0 and not any(CASE_RE.match(l) and l.startswith("not ok") for l in out.splitlines()):
        problem = "exited with status %d but reported no failing case" % rc
    if problem:
        res.fail("[%s] test_tls: %s" % (label, problem))
        print("not ok - test_tls (%s): %s" % (label, problem), flush=True)
        if vg and rc == VALGRIND_ERROR_EXIT:
            print(valgrind_log_tail(vg_log))
        elif (report := sanitizer_excerpt(out)):
            print(report)
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

    res = Results()
    args.logdir.mkdir(parents=True, exist_ok=True)
    if not args.bin.is_file():
        return give_up("not ok - test_tls: %s is not built (make c-tests)" % args.bin, show_skipped=False)
    if (args.valgrind or args.both) and not shutil.which("valgrind"):
        return give_up("not ok - test_tls: valgrind not found", show_skipped=False)

    tmp = Path(tempfile.mkdtemp(prefix="pjws-tls-"))
    server = None
    t0 = time.monotonic()
    try:
        info = certs.make_certs(tmp / "pki")
        server = Server("tls_server.py", [sys.executable, str(HERE / "tls_server.py"), "--certs", info["dir"],
                                          "--watch-stdin"] + (["-v"] if args.verbose else []),
                        args.logdir / "tls_server.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TLS_PORT_", "TLS_PIN_"))}
        env["TLS_CERTDIR"] = info["dir"]
        env["TLS_CLIENT_PASSWORD"] = info["client_password"]
        for name, port in server.info.items():
            if port:
                env["TLS_PORT_%s" % name.upper()] = str(port)
        env["TLS_PORT_REFUSED"] = str(refused_port())
        for name, pin in info["pins"].items():
            env["TLS_PIN_%s" % name.upper()] = pin
        env["PJWS_TEST_TMPDIR"] = str(tmp)
        print("# certificates: %s; server ports: %s" % (info["dir"], json.dumps(server.info)), flush=True)
        print("# logs: %s" % args.logdir, flush=True)

        passes = [False, True] if args.both else [args.valgrind]
        for vg in passes:
            run_pass(args.bin, env, vg, args, args.logdir, res)
            if not server.alive():
                res.fail("tls_server.py died (see %s)" % server.log_path)
    except (RuntimeError, OSError) as e:
        res.fail(str(e))
        print("not ok - setup: %s" % e)
    finally:
        if server:
            server.stop()
        if args.keep:
            print("# kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    return res.report(t0, show_skipped=res.skipped > 0)


if __name__ == "__main__":
    sys.exit(main())
