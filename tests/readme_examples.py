#!/usr/bin/env python3
"""Compiles the complete C programs shown in README.md.

    python3 tests/readme_examples.py [--readme README.md] [--include include]
                                     [--libdir build/lib] [--cc cc] [-v]

Every fenced ```c block of the README that is a whole program (it contains
`int main`) is written to a temporary directory and compiled and linked
with

    cc -std=c11 -Wall -Wextra -Werror -Iinclude prog.c -Lbuild/lib -lpjwebsock

(CC from the environment replaces cc). Blocks without `int main` are
fragments and are not compiled. Each program prints one line, "ok - ..." or
"not ok - ...: why" followed by the compiler's messages; the last line is
"N passed, N failed". Exits non-zero if a program failed to build, if the
README has no complete program, or if the library is not built.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FENCE_RE = re.compile(r"^```(\S*)\s*$")
HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*$")


def c_blocks(text: str):
    """(first line number, section heading, code) of every ```c block."""
    blocks = []
    heading = "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE_RE.match(line)
        if not m:
            h = HEADING_RE.match(line)
            if h:
                heading = h.group(1)
            i += 1
            continue
        lang = m.group(1).lower()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if lang == "c":
            blocks.append((start + 1, heading, "\n".join(lines[start:j]) + "\n"))
        i = j + 1
    return blocks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--include", type=Path, default=ROOT / "include")
    ap.add_argument("--libdir", type=Path, default=ROOT / "build" / "lib")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    ap.add_argument("-v", "--verbose", action="store_true", help="print each compiler command")
    args = ap.parse_args()

    if not any((args.libdir / name).exists() for name in ("libpjwebsock.so", "libpjwebsock.a")):
        print("not ok - README examples: no libpjwebsock in %s (make lib)" % args.libdir)
        print("0 passed, 1 failed")
        return 1

    blocks = c_blocks(args.readme.read_text())
    programs = [b for b in blocks if re.search(r"\bint\s+main\s*\(", b[2])]
    print("# %s: %d C blocks, %d complete programs (with int main), %d fragments not compiled"
          % (args.readme.name, len(blocks), len(programs), len(blocks) - len(programs)), flush=True)
    passed = failed = 0
    if not programs:
        print("not ok - README examples: no complete C program (with int main) in %s" % args.readme)
        failed += 1
    with tempfile.TemporaryDirectory(prefix="pjws-readme-") as tmp:
        for n, (line, heading, code) in enumerate(programs, 1):
            name = "%s line %d (%s)" % (args.readme.name, line, heading)
            src = Path(tmp) / ("example%d.c" % n)
            src.write_text(code)
            argv = shlex.split(args.cc) + ["-std=c11", "-Wall", "-Wextra", "-Werror", "-I%s" % args.include,
                                           str(src), "-L%s" % args.libdir, "-lpjwebsock",
                                           "-o", str(Path(tmp) / ("example%d" % n))]
            if args.verbose:
                print("# " + " ".join(shlex.quote(a) for a in argv), flush=True)
            try:
                r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                print("not ok - %s: %s" % (name, e), flush=True)
                failed += 1
                continue
            if r.returncode == 0:
                print("ok - %s" % name, flush=True)
                passed += 1
            else:
                print("not ok - %s: %s exited with %d" % (name, argv[0], r.returncode), flush=True)
                for l in r.stdout.splitlines():
                    print("#   " + l)
                failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
