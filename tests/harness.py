"""What the Python test runners share.

Used by tests/run_c_tests.py, tests/tls/run.py, tests/conformance/run.py and
tests/pjlib/run.py (those in subdirectories put tests/ on sys.path first).
Stdlib only.

  Results          passed / failed / skipped counts of a whole run; report()
                   prints the failures and the closing line
                   "<P> passed, <F> failed[, <S> skipped]" that
                   tests/summary.sh adds up; give_up() the same for a
                   runner that cannot start
  Server           a test peer (tests/servers/*.py, tls_server.py, the
                   conformance server) started with --watch-stdin: it
                   prints one JSON line (its ports) and exits when its stdin
                   closes
  refused_port     a loopback port where nothing listens
  run_process      runs a program in its own process group with a time
                   limit, output to a log file and returned (optionally
                   echoed line by line)
  valgrind_argv    the valgrind command line (memcheck, leaks are errors,
                   exit status VALGRIND_ERROR_EXIT), with tests/valgrind.supp
  valgrind_summary the error reports of a valgrind log, shortened
  tally_run        reads the "ok - / not ok - / SKIPPED - <case>" lines of a
                   test program's output and judges its exit (crash,
                   timeout, valgrind errors, status inconsistent with the
                   cases); abnormal_end and signame are its pieces
"""

import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPRESSIONS = TESTS / "valgrind.supp"

VALGRIND_ARGS = [
    "valgrind",
    "--error-exitcode=99",
    "--leak-check=full",
    "--show-leak-kinds=definite,indirect,possible",
    "--errors-for-leak-kinds=definite,indirect,possible",
    "--num-callers=40",
]
VALGRIND_ERROR_EXIT = 99

# One line per case of a test program; "# running <case>" announces one.
CASE_RE = re.compile(r"^(ok|not ok|SKIPPED) - (.*)$")
RUNNING = "# running "


def say(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# Counting and the closing line

def closing_line(passed, failed, skipped=None):
    """The closing line: "<P> passed, <F> failed", plus ", <S> skipped"
    unless skipped is None."""
    return "%d passed, %d failed" % (passed, failed) + ("" if skipped is None else ", %d skipped" % skipped)


def give_up(why, show_skipped=True):
    """For a runner that cannot run anything: prints why and a closing line
    with one failure; returns the exit status."""
    say(why)
    say(closing_line(0, 1, 0 if show_skipped else None))
    return 1


class Results:
    """Counts of a whole run; safe to update from several threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.passed = 0
        self.failed: list[str] = []     # one description per failure
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

    def report(self, t_start=None, show_skipped=True):
        """Prints "== total N s ==" (if t_start is given), the failures and
        the closing line; returns the exit status."""
        if t_start is not None:
            say("== total %.1f s ==" % (time.monotonic() - t_start))
        if self.failed:
            say("Failures:")
            for f in self.failed:
                say("  " + f)
        say(closing_line(self.passed, len(self.failed), self.skipped if show_skipped else None))
        return 1 if self.failed else 0


# ---------------------------------------------------------------------------
# Peers

class Server:
    """A peer started with --watch-stdin. It reports its ports as one JSON
    line on stdout (self.info) and exits when its stdin is closed (stop()).
    nofile raises the peer's RLIMIT_NOFILE soft limit to at least that."""

    def __init__(self, name, argv, log_path: Path, cwd=None, nofile=None, timeout=20):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "wb")

        def raise_nofile():
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = hard if hard == resource.RLIM_INFINITY else min(max(soft, nofile), hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     cwd=None if cwd is None else str(cwd),
                                     preexec_fn=raise_nofile if nofile else None)
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.stop()
            raise RuntimeError("%s did not report its port within %d s (see %s)" % (name, timeout, log_path))
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("%s exited at startup (see %s)" % (name, log_path))
        self.info = json.loads(line)

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


# ---------------------------------------------------------------------------
# Running programs

def run_process(argv, env, timeout, log_path, cwd=None, echo=None):
    """Runs argv in its own process group (killed as a whole after timeout
    seconds), stdout and stderr into log_path. With echo, echo(line) is
    called with each output line as it comes. Returns (rc, output,
    timed_out, seconds)."""
    t0 = time.monotonic()
    chunks = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)

        def reader():
            read = proc.stdout.readline if echo else lambda: proc.stdout.read1(65536)
            for chunk in iter(read, b""):
                chunks.append(chunk)
                log.write(chunk)
                log.flush()
                if echo:
                    echo(chunk.decode("utf-8", "replace").rstrip("\n"))

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


def valgrind_argv(log_path, suppressions=(), gen_suppressions=True):
    """The valgrind prefix of a command line: tests/valgrind.supp plus the
    suppression files given, the log to log_path; gen_suppressions: a
    ready-made suppression after each error in the log."""
    supp = [SUPPRESSIONS] + [Path(p).resolve() for p in suppressions]
    return (VALGRIND_ARGS + (["--gen-suppressions=all"] if gen_suppressions else [])
            + ["--suppressions=%s" % p for p in supp] + ["--log-file=%s" % log_path])


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


# ---------------------------------------------------------------------------
# Judging a run of a test program

def signame(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return "signal %d" % -rc


SAN_SUMMARY_RE = re.compile(r"^SUMMARY: ((?:Address|Leak|UndefinedBehavior)Sanitizer: .*)$", re.M)
SAN_UB_RE = re.compile(r"^(\S+: runtime error: .*)$", re.M)


def sanitizer_report(out):
    """The one-line summary of an AddressSanitizer, LeakSanitizer or UBSan
    report in a program's output, None if there is none."""
    if not out:
        return None
    m = SAN_UB_RE.search(out) or SAN_SUMMARY_RE.search(out)
    return m.group(1) if m else None


SAN_START_RE = re.compile(r"^==\d+==ERROR: \w+Sanitizer|: runtime error: ", re.M)


def sanitizer_excerpt(out, lines=14):
    """The first lines of a sanitizer report in a program's output (where
    it says what went wrong, and where), None if there is none."""
    m = SAN_START_RE.search(out or "")
    if not m:
        return None
    start = out.rfind("\n", 0, m.start()) + 1
    return "\n".join(out[start:].splitlines()[:lines])


def abnormal_end(rc, timed_out, timeout, vg_log=None, running=None, out=None):
    """Why a run failed whatever it printed: it timed out, valgrind reported
    errors (vg_log: the valgrind log, None for a native run), a sanitizer
    reported an error (out: the program's output) or it crashed; None if it
    did not. running: the case it was in, if known."""
    where = "; case running: %s" % running if running else ""
    if timed_out:
        return "timed out after %d s%s" % (timeout, where)
    if vg_log and rc == VALGRIND_ERROR_EXIT:
        return "valgrind reported errors (log: %s)" % vg_log
    san = sanitizer_report(out) if rc != 0 else None
    if san:
        return "%s%s" % (san, where)
    if rc < 0:
        return "crashed with %s%s" % (signame(rc), where)
    return None


class Tally:
    """The outcome of one run of a test program (see tally_run)."""

    def __init__(self):
        self.ok = self.failed = self.skipped = 0    # failed includes the problems
        self.lines = []           # what to print under the program's line
        self.problems = []        # failures of the run itself
        self.running = None       # the case announced and not finished
        self.last_started = None  # the last case announced


def tally_run(label, out, rc, timed_out, timeout, vg_log, res: Results):
    """Counts the case lines of a test program's output into res (failures
    as "<label>: <case>: <why>") and judges its exit: a crash, a timeout,
    valgrind errors, a status that does not match the cases or no case at
    all each count as one more failure ("<label>: <problem>")."""
    t = Tally()
    for line in out.splitlines():
        if line.startswith(RUNNING):
            t.running = t.last_started = line[len(RUNNING):]
            continue
        m = CASE_RE.match(line)
        if not m:
            continue
        kind, rest = m.groups()
        t.running = None
        if kind == "ok":
            t.ok += 1
        elif kind == "not ok":
            t.failed += 1
            res.fail("%s: %s" % (label, rest))
            t.lines.append("    not ok - %s" % rest)
        else:
            t.skipped += 1
            t.lines.append("    SKIPPED - %s" % rest)
    res.ok(t.ok)
    res.skip(t.skipped)

    why = abnormal_end(rc, timed_out, timeout, vg_log, t.running, out)
    if why:
        t.problems.append(why)
    elif rc != 0 and t.failed == 0:
        t.problems.append("exited with status %d but reported no failing case%s"
                          % (rc, "; case running: %s" % t.running if t.running else ""))
    elif rc == 0 and t.failed:
        t.problems.append("exited 0 although %d case(s) failed" % t.failed)
    if t.ok + t.failed + t.skipped == 0 and not t.problems:
        t.problems.append("reported no test case")
    for p in t.problems:
        res.fail("%s: %s" % (label, p))
        t.lines.append("    FAILED: %s" % p)
        t.failed += 1
    return t
