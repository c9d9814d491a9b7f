#!/usr/bin/env python3
"""libpjwebsock's pjlib suite: the library driven by a real pjlib.

    PJPROJECT_DIR=/path/to/pjproject .venv/bin/python tests/pjlib/run.py [--valgrind | --asan]

What it runs:
  1. tests/pjlib/test_no_pjlib.c, always (no pjproject needed): pjlib mode
     requested in a program without pjlib -> PJ_ENOTSUP.
  2. tests/pjlib/test_pjlib_driver.c, built against the pjproject build and
     build/lib/libpjwebsock.so, run against tests/servers/ws_server.py and
     raw_server.py on 127.0.0.1 (see the C file for the cases).
  3. pjproject's own websock_test: the object files of pjlib-util-test from
     the PJPROJECT_DIR build relinked with -lpjwebsock ahead of pjlib-util,
     run as `pjlib-util-test websock_test`; nm and LD_DEBUG=bindings confirm
     that pj_websock_* resolve to libpjwebsock.so.
  With --valgrind, 1, 2 and websock_test run once more under valgrind
  (memcheck, leaks are errors; suppressions: tests/valgrind.supp, plus
  tests/pjlib/pjlib.supp if it exists). A crash in one group of cases of
  test_pjlib_driver does not hide the others: the groups after it are run
  in a new process. With --asan (make test-asan), 1 and 2 are built with
  AddressSanitizer and UBSan into build/asan/pjlib and run natively
  (pjproject's own websock_test is not relinked for that pass).

Finding pjproject:
  PJPROJECT_DIR (or --pjproject-dir): a pjproject source tree configured and
  built in place (make -C pjlib/build; make -C pjlib-util/build): headers in
  pjlib/include, libraries in pjlib/lib and pjlib-util/lib, either
  libpj.so (--enable-shared) or libpj-<triplet>.a; the compiler flags come
  from its build.mak (PJ_CFLAGS), the system libraries from
  build/os-auto.mak (OS_LDFLAGS). Otherwise `pkg-config libpjproject` (an
  installed pjproject; step 3 is then skipped: it needs the build's object
  files). Without either, 2 and 3 print "SKIPPED: pjproject not found" and
  count as skipped.

Output: per program a line "<name> <P> passed <F> failed <S> skipped", the
failing cases, and at the end one line "<P> passed, <F> failed, <S> skipped"
(what tests/summary.sh adds up); exit status non-zero if anything failed.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SERVERS = HERE.parent / "servers"
PJLIB_SUPP = HERE / "pjlib.supp"
sys.path.insert(0, str(HERE.parent))
from harness import (VALGRIND_ERROR_EXIT, Results, Server, abnormal_end, give_up, run_process,  # noqa: E402
                     say, tally_run, valgrind_argv, valgrind_summary)

CC = os.environ.get("CC", "cc")
CFLAGS_COMMON = ["-std=gnu11", "-D_GNU_SOURCE", "-g", "-O1", "-Wall", "-Wextra", "-Werror"]
# --asan: the test programs built with AddressSanitizer and UBSan (the
# Makefile passes its SAN_FLAGS).
SAN_FLAGS = shlex.split(os.environ.get("PJWS_SAN_FLAGS",
                                       "-fsanitize=address,undefined -fno-sanitize-recover=all "
                                       "-fno-omit-frame-pointer"))


# ---------------------------------------------------------------------------
# pjproject discovery

class PjProject:
    """How to compile and link against one pjproject build."""

    def __init__(self, how, cflags, libs, pjlib_util_libs=None, tree=None, shared=False, rpath=()):
        self.how = how                    # human-readable origin
        self.cflags = cflags              # -I / -D flags
        self.libs = libs                  # pjlib + system libraries
        self.pjlib_util_libs = pjlib_util_libs or []
        self.tree = tree                  # in-place build tree (Path) or None
        self.shared = shared
        self.rpath = list(rpath)


def make_var(tree: Path, mk: str, var: str):
    """$(var) after including tree/mk, via make itself; None on failure."""
    if not (tree / mk).exists() or not shutil.which("make"):
        return None
    script = "include %s\n__print:\n\t@echo $(%s)\n" % (tree / mk, var)
    try:
        out = subprocess.run(["make", "-s", "--no-print-directory", "-f", "-", "__print"], input=script,
                             capture_output=True, text=True, cwd=str(tree), timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()


def one(pattern):
    """The single file matching a glob pattern (the build triplet varies)."""
    hits = sorted(glob.glob(pattern))
    return hits[0] if hits else None


def find_in_tree(tree: Path):
    if not (tree / "pjlib/include/pjlib.h").exists():
        raise RuntimeError("PJPROJECT_DIR=%s: no pjlib/include/pjlib.h (not a pjproject tree)" % tree)
    cflags = []
    pj_cflags = make_var(tree, "build.mak", "PJ_CFLAGS")
    if pj_cflags:
        cflags = [f for f in shlex.split(pj_cflags) if f.startswith(("-D", "-I"))]
    if not any(f.startswith("-DPJ_AUTOCONF") for f in cflags):
        # build.mak unusable: what aconfigure would have given us
        little = sys.byteorder == "little"
        cflags = ["-DPJ_AUTOCONF=1", "-DPJ_IS_BIG_ENDIAN=%d" % (not little),
                  "-DPJ_IS_LITTLE_ENDIAN=%d" % little]
    for sub in ("pjlib", "pjlib-util"):
        inc = "-I%s" % (tree / sub / "include")
        if inc not in cflags:
            cflags.append(inc)
    os_libs = None
    os_auto = tree / "build/os-auto.mak"
    if os_auto.exists():
        m = re.search(r"^export OS_LDFLAGS\s*:=\s*(.*)$", os_auto.read_text(errors="replace"), re.M)
        if m:
            os_libs = shlex.split(m.group(1))
    if not os_libs:
        os_libs = ["-luuid", "-lm", "-lrt", "-lpthread"]

    pjlib_dir, util_dir = tree / "pjlib/lib", tree / "pjlib-util/lib"
    if (pjlib_dir / "libpj.so").exists():
        # --enable-shared: libpj.so / libpjlib-util.so (no triplet in the name)
        rpath = [str(pjlib_dir), str(util_dir)]
        libs = ["-L%s" % pjlib_dir, "-lpj"] + os_libs
        util = ["-L%s" % util_dir, "-lpjlib-util"] if (util_dir / "libpjlib-util.so").exists() else []
        return PjProject("PJPROJECT_DIR=%s (shared libpj.so)" % tree, cflags, libs, util, tree, True, rpath)
    libpj = one(str(pjlib_dir / "libpj-*.a"))
    if not libpj:
        raise RuntimeError("PJPROJECT_DIR=%s: neither pjlib/lib/libpj.so nor pjlib/lib/libpj-*.a "
                           "(build it: make -C pjlib/build)" % tree)
    util_a = one(str(util_dir / "libpjlib-util-*.a"))
    return PjProject("PJPROJECT_DIR=%s (static %s)" % (tree, os.path.basename(libpj)), cflags,
                     [libpj] + os_libs, [util_a] if util_a else [], tree, False)


def find_pjproject(args):
    """A PjProject, None when there is none, RuntimeError when the one named is unusable."""
    tree = args.pjproject_dir or os.environ.get("PJPROJECT_DIR")
    if tree:
        return find_in_tree(Path(tree).resolve())
    if shutil.which("pkg-config") and subprocess.run(["pkg-config", "--exists", "libpjproject"]).returncode == 0:
        cflags = shlex.split(subprocess.run(["pkg-config", "--cflags", "libpjproject"], capture_output=True,
                                            text=True).stdout)
        libs = shlex.split(subprocess.run(["pkg-config", "--libs", "libpjproject"], capture_output=True,
                                          text=True).stdout)
        return PjProject("pkg-config libpjproject", cflags, libs)
    return None


# ---------------------------------------------------------------------------
# Building and running

def compile_c(argv, what, res, logdir):
    """Runs a compiler/linker command; records a failure and returns False if it fails."""
    say("# %s" % " ".join(shlex.quote(a) for a in argv))
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        res.fail("%s: build failed" % what)
        say("%-44s FAILED (build)" % what)
        say("\n".join("    | " + l for l in (out.stdout + out.stderr).splitlines()[-30:]))
        return False
    return True


def pj_valgrind_argv(log_path):
    """valgrind_argv, with tests/pjlib/pjlib.supp too when it exists."""
    return valgrind_argv(log_path, [PJLIB_SUPP] if PJLIB_SUPP.exists() else [])


def run_test_binary(label, argv, env, res, logdir, timeout, vg=False):
    """Runs a program printing ok/not ok/SKIPPED lines; accounts for them.
    Returns the name of the case that was running when the program crashed
    or timed out (None otherwise)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    log_path = logdir / ("%s.out" % slug)
    vg_log = None
    env = dict(env)
    if vg:
        vg_log = logdir / ("%s.valgrind.log" % slug)
        argv = pj_valgrind_argv(vg_log) + argv
        env["PJWS_UNDER_VALGRIND"] = "1"
    rc, out, timed_out, secs = run_process(argv, env, timeout, log_path)
    t = tally_run(label, out, rc, timed_out, timeout, vg_log, res)
    # the program ended early (crash, hang, or it stopped itself)
    died_in = t.last_started if (timed_out or rc not in (0, 1, VALGRIND_ERROR_EXIT)) else None
    if not t.problems and rc not in (0, 1) and t.failed:
        # the watchdog (3) or a case that left live instances (4) stopped
        # the program after reporting the failure: nothing to add
        t.lines.append("    (stopped early, exit status %d, after: %s)" % (rc, t.last_started))
    say("%-44s %4d passed %3d failed %3d skipped %8.1f s" % (label, t.ok, t.failed, t.skipped, secs))
    for l in t.lines:
        say(l)
    if vg and rc == VALGRIND_ERROR_EXIT:
        say(valgrind_summary(vg_log, frames=12))
    if t.problems and not (vg and rc == VALGRIND_ERROR_EXIT):
        say("    --- last output lines (%s) ---" % log_path)
        say("\n".join("    | " + l for l in out.splitlines()[-25:]))
    return died_in


def run_driver(driver, env, res, logdir, timeout, vg, tag=""):
    """Runs test_pjlib_driver; after a crash (or hang) in one group of cases,
    runs the groups after it, so that one crash does not hide the rest."""
    suffix = tag + (" [valgrind]" if vg else "")
    out = subprocess.run([str(driver), "--list"], capture_output=True, text=True)
    m = re.match(r"groups: (\w+)", out.stdout)
    groups = list(m.group(1)) if m else []
    remaining = groups
    label = "test_pjlib_driver" + suffix
    while True:
        argv = [str(driver)] + (remaining if remaining != groups else [])
        died_in = run_test_binary(label, argv, env, res, logdir, timeout, vg)
        if not died_in or not groups or died_in[0] not in remaining:
            return
        remaining = remaining[remaining.index(died_in[0]) + 1:]
        if not remaining:
            return
        say("# continuing with the case groups after %s: %s" % (died_in[0], " ".join(remaining)))
        label = "test_pjlib_driver (%s)%s" % ("".join(remaining), suffix)


# ---------------------------------------------------------------------------
# Step 3: pjproject's websock_test relinked with -lpjwebsock

def websock_test_relinked(pj: PjProject, libdir: Path, bindir: Path, logdir: Path, res: Results, timeout):
    name_run = "pjlib-util-test websock_test, relinked with -lpjwebsock"
    name_bind = "relinked pjlib-util-test: pj_websock_* resolve to libpjwebsock.so"
    objdir = one(str(pj.tree / "pjlib-util/build/output/pjlib-util-test-*"))
    objs = sorted(glob.glob(os.path.join(objdir, "*.o"))) if objdir else []
    if not any(o.endswith("websock_test.o") for o in objs) or not pj.pjlib_util_libs:
        why = ("no pjlib-util-test objects with websock_test.o under %s/pjlib-util/build/output "
               "(build them: make -C pjlib-util/build)" % pj.tree)
        res.fail("%s: %s" % (name_run, why))
        say("not ok - %s: %s" % (name_run, why))
        return None
    exe = bindir / "pjlib-util-test-pjwebsock"
    # as a PJSIP application does it: -lpjwebsock ahead of -lpjlib-util
    argv = ([CC, "-o", str(exe)] + objs
            + ["-L%s" % libdir, "-lpjwebsock", "-Wl,-rpath,%s" % ":".join([str(libdir)] + pj.rpath)]
            + pj.pjlib_util_libs + pj.libs)
    if not compile_c(argv, "pjlib-util-test (relink)", res, logdir):
        return None

    # nm: no pj_websock_* defined in the executable (websock.o of
    # libpjlib-util.a not pulled in), pj_websock_connect undefined/dynamic
    problems = []
    nm_all = subprocess.run(["nm", str(exe)], capture_output=True, text=True).stdout
    defined = sorted(set(m.group(1) for m in re.finditer(r"^\S*\s+[TtDdBb] (pj_websock_\w+)$", nm_all, re.M)))
    if defined:
        problems.append("defined in the executable itself (pjlib-util's websock.o linked in): %s"
                        % ", ".join(defined[:5]))
    nm_dyn = subprocess.run(["nm", "-D", "--undefined-only", str(exe)], capture_output=True, text=True).stdout
    if not re.search(r"\bU pj_websock_connect\b", nm_dyn):
        problems.append("pj_websock_connect is not an undefined dynamic symbol of the executable")
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    m = re.search(r"libpjwebsock\.so\S*\s+=>\s+(\S+)", ldd)
    if not m or Path(m.group(1)).resolve() != (libdir / "libpjwebsock.so.0").resolve():
        problems.append("ldd does not show %s/libpjwebsock.so.0: %s" % (libdir, ldd.strip()))

    # run websock_test only, recording the dynamic linker's bindings
    ld_prefix = logdir / "websock_test.ld-bindings"
    for old in glob.glob(str(ld_prefix) + ".*"):
        os.unlink(old)
    env = dict(os.environ, LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(ld_prefix))
    log_path = logdir / "pjlib-util-test.websock_test.out"
    run_websock_test(exe, env, res, logdir, timeout, False)

    bindings = ""
    for f in glob.glob(str(ld_prefix) + ".*"):
        with open(f, errors="replace") as fh:
            bindings += "".join(l for l in fh if "pj_websock_" in l)
    targets = {}
    for mm in re.finditer(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `(pj_websock_\w+)'",
                          bindings):
        if os.path.basename(mm.group(1)) == exe.name:
            targets.setdefault(mm.group(3), set()).add(os.path.basename(mm.group(2)))
    if "pj_websock_connect" not in targets:
        problems.append("LD_DEBUG=bindings shows no binding of pj_websock_connect")
    wrong = {s: t for s, t in targets.items() if t != {"libpjwebsock.so.0"}}
    if wrong:
        problems.append("bound elsewhere: %s" % ", ".join("%s -> %s" % (s, "/".join(sorted(t)))
                                                          for s, t in sorted(wrong.items())))
    if problems:
        res.fail("%s: %s" % (name_bind, "; ".join(problems)))
        say("not ok - %s: %s" % (name_bind, "; ".join(problems)))
    else:
        res.ok()
        say("ok - %s (%d symbols bound: %s)" % (name_bind, len(targets), ", ".join(sorted(targets))))
    return exe


def run_websock_test(exe, env, res, logdir, timeout, vg):
    """`pjlib-util-test websock_test` (only that test), natively or under valgrind."""
    name = "pjlib-util-test websock_test, relinked with -lpjwebsock" + (" [valgrind]" if vg else "")
    log_path = logdir / ("pjlib-util-test.websock_test%s.out" % (".valgrind" if vg else ""))
    argv = [str(exe), "websock_test"]
    vg_log = None
    if vg:
        vg_log = logdir / "pjlib-util-test.websock_test.valgrind.log"
        argv = pj_valgrind_argv(vg_log) + argv
    say("# %s" % " ".join(argv[-2:]))
    rc, out, timed_out, secs = run_process(argv, env, timeout, log_path, cwd=str(exe.parent))
    stat = re.search(r"Number of failed test:\s*(\d+)", out)
    ran = re.search(r"Number of test run:\s*(\d+)", out)
    why = abnormal_end(rc, timed_out, timeout, vg_log)
    if why is None:
        if rc != 0 or not stat or stat.group(1) != "0":
            why = "exit status %d, %s" % (rc, "failed tests: %s" % stat.group(1) if stat else "no statistics printed")
        elif not ran or ran.group(1) != "1":
            why = "websock_test did not run (tests run: %s)" % (ran.group(1) if ran else "?")
    if why:
        res.fail("%s: %s" % (name, why))
        say("not ok - %s: %s (%.1f s)" % (name, why, secs))
        if vg_log and rc == VALGRIND_ERROR_EXIT:
            say(valgrind_summary(vg_log, frames=12))
        else:
            say("    --- last output lines (%s) ---" % log_path)
            say("\n".join("    | " + l for l in out.splitlines()[-30:]))
    else:
        res.ok()
        say("ok - %s (%.1f s)" % (name, secs))


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="libpjwebsock's pjlib suite.")
    ap.add_argument("--pjproject-dir", default=None, help="built pjproject tree (default: $PJPROJECT_DIR)")
    ap.add_argument("--libdir", type=Path, default=ROOT / "build/lib",
                    help="directory with libpjwebsock.so (default build/lib)")
    ap.add_argument("--valgrind", action="store_true", help="also run the C programs under valgrind")
    ap.add_argument("--valgrind-only", action="store_true", help="only the valgrind pass")
    ap.add_argument("--asan", action="store_true",
                    help="build the test programs with AddressSanitizer and UBSan and run them natively "
                         "(output in build/asan; pjproject's websock_test is not relinked)")
    ap.add_argument("--timeout", type=int, default=600, help="per program, native (s)")
    ap.add_argument("--vg-timeout", type=int, default=1800, help="per program, under valgrind (s)")
    args = ap.parse_args()
    if args.valgrind_only:
        args.valgrind = True

    res = Results()
    t_start = time.monotonic()
    if args.asan and args.valgrind:
        return give_up("not ok - setup: --asan and --valgrind do not go together")
    outdir = ROOT / ("build/asan/pjlib" if args.asan else "build/pjlib")
    logdir = ROOT / ("build/asan/test-logs/pjlib" if args.asan else "build/test-logs/pjlib")
    cflags = CFLAGS_COMMON + (SAN_FLAGS if args.asan else [])
    tag = " [asan]" if args.asan else ""
    outdir.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)
    libdir = args.libdir.resolve()
    passes = ([] if args.valgrind_only else [False]) + ([True] if args.valgrind else [])

    if not (libdir / "libpjwebsock.so").exists():
        return give_up("not ok - setup: %s/libpjwebsock.so not found (make lib)" % libdir)
    if args.valgrind and not shutil.which("valgrind"):
        return give_up("not ok - setup: valgrind not found")

    pjws = ["-I%s" % (ROOT / "include")]
    link_pjws = ["-L%s" % libdir, "-lpjwebsock", "-Wl,-rpath,%s" % libdir]

    # 1. no pjlib in the process
    no_pj = outdir / "test_no_pjlib"
    built_no_pj = compile_c([CC] + cflags + pjws + [str(HERE / "test_no_pjlib.c"), "-o", str(no_pj)]
                            + link_pjws + ["-lpthread"], "test_no_pjlib", res, logdir)

    try:
        pj = find_pjproject(args)
    except RuntimeError as e:
        pj = None
        res.fail(str(e))
        say("not ok - pjproject: %s" % e)
    else:
        if pj is None:
            say("SKIPPED: pjproject not found (set PJPROJECT_DIR to a pjproject tree built in place, "
                "or install libpjproject.pc); test_pjlib_driver%s not run" % ("" if args.asan else " and websock_test"))
            res.skip(1 if args.asan else 2)
        else:
            say("# pjproject: %s" % pj.how)

    driver = None
    if pj:
        driver = outdir / "test_pjlib_driver"
        rpath = ["-Wl,-rpath,%s" % ":".join(pj.rpath)] if pj.rpath else []
        ctests = ROOT / "c-tests"   # testutil.c: clock, waits, valgrind scaling
        if not compile_c([CC] + cflags + pj.cflags + pjws
                         + ["-I%s" % ctests, str(HERE / "test_pjlib_driver.c"), str(ctests / "testutil.c"),
                            "-o", str(driver)]
                         + link_pjws + rpath + pj.libs, "test_pjlib_driver", res, logdir):
            driver = None

    servers = []
    relinked = None      # the relinked pjlib-util-test, once built
    try:
        env = dict(os.environ)
        for k in ("WS_ECHO_URL", "WS_RAW_URL", "PJWS_UNDER_VALGRIND"):
            env.pop(k, None)
        if driver:
            # 1000 concurrent connections need more than the usual 1024 descriptors
            ws = Server("ws_server", [sys.executable, str(SERVERS / "ws_server.py"), "--watch-stdin",
                                      "--no-ipv6"], logdir / "ws_server.log", cwd=SERVERS, nofile=4096)
            servers.append(ws)
            raw = Server("raw_server", [sys.executable, str(SERVERS / "raw_server.py"), "--watch-stdin"],
                         logdir / "raw_server.log", cwd=SERVERS)
            servers.append(raw)
            env["WS_ECHO_URL"] = "ws://127.0.0.1:%d" % ws.info["port"]
            env["WS_RAW_URL"] = "ws://127.0.0.1:%d" % raw.info["port"]
            say("# WS_ECHO_URL=%s WS_RAW_URL=%s" % (env["WS_ECHO_URL"], env["WS_RAW_URL"]))
        say("# logs: %s" % logdir)
        for vg in passes:
            say("== %s ==" % ("under valgrind" if vg else "native"))
            suffix = " [valgrind]" if vg else ""
            timeout = args.vg_timeout if vg else args.timeout
            if built_no_pj:
                run_test_binary("test_no_pjlib" + tag + suffix, [str(no_pj)], env, res, logdir, timeout, vg)
            if driver:
                run_driver(driver, env, res, logdir, timeout, vg, tag)
            if pj and args.asan:
                say("# pjlib-util-test websock_test: pjproject's own program, not relinked for the ASan pass")
            elif pj and pj.tree is None:
                say("SKIPPED - pjlib-util-test websock_test: needs PJPROJECT_DIR (the build's object "
                    "files), not an installed pjproject")
                res.skip()
            elif pj:
                if relinked is None:
                    relinked = websock_test_relinked(pj, libdir, outdir, logdir, res, min(timeout, 300)) or False
                    if relinked and vg:
                        run_websock_test(relinked, env, res, logdir, timeout, True)
                elif relinked:
                    run_websock_test(relinked, env, res, logdir, timeout, vg)
            for s in servers:
                if not s.alive():
                    res.fail("%s died during the run (see %s)" % (s.name, s.log_path))
    except RuntimeError as e:
        res.fail(str(e))
        say("not ok - %s" % e)
    finally:
        for s in servers:
            s.stop()

    return res.report(t_start)


if __name__ == "__main__":
    sys.exit(main())
