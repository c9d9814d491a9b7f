#!/usr/bin/env python3
"""Benchmark runner of libpjwebsock: runs every client against the same
echo server, collects one JSON line per run, computes medians and ratios,
counts instructions under callgrind, runs the criterion micro-benchmarks and
writes bench/results/<stamp>.jsonl and bench/RESULTS.md.

Python 3 standard library only. Normally started by bench/run.sh
(`make bench`) or bench/smoke.sh (`make test`), which build everything
first. See bench/README.md.

  python3 bench/run.py                  # full suite, 5 interleaved repetitions
  python3 bench/run.py --reps 3 --workloads stream,bulk-1MiB --no-micro
  python3 bench/run.py --smoke          # tiny runs, verification only
  python3 bench/run.py --report bench/results/X.jsonl   # redo RESULTS.md
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BUILD = os.path.join(BENCH, "build")
RESULTS = os.path.join(BENCH, "results")

PJ = "libpjwebsock"
# The same library and client program with the event loop in poll mode
# (PJ_WEBSOCK_LOOP_POLL: no library thread, the client's thread runs the
# loop in pj_websock_poll(), as every peer runs its own event loop).
PJP = "libpjwebsock-poll"
OWN = (PJ, PJP)
# Not a peer: raw sockets and no WebSocket library, the kernel's share of
# the ws:// fanout, stream and bulk workloads (what any client pays; see
# bench/README.md, "Floor").
FLOOR = "raw-sockets"
CLIENT_ORDER = [PJ, PJP, "tokio-tungstenite", "libwebsockets", "boost-beast", FLOOR]
CLIENT_ENV = {PJP: {"PJWS_LOOP": "poll"}}
# Clients that run only some workloads (the others run all of them).
CLIENT_WORKLOADS = {FLOOR: ("stream", "bulk-60KiB", "bulk-1MiB", "fanout")}


def runs_workload(client, name):
    return name in CLIENT_WORKLOADS.get(client, (name,))


def is_peer(client):
    return client not in OWN and client != FLOOR


def client_env(client):
    env = dict(os.environ)
    env.update(CLIENT_ENV.get(client, {}))
    return env


def client_bins(profile):
    tdir = os.path.join(BENCH, "target", profile)
    cdir = os.path.join(BUILD, "smoke-bin" if profile == "smoke" else "bin")
    return {
        PJ: os.path.join(cdir, "pj-client"),
        PJP: os.path.join(cdir, "pj-client"),
        "tokio-tungstenite": os.path.join(tdir, "tungstenite-client"),
        "libwebsockets": os.path.join(cdir, "lws-client"),
        "boost-beast": os.path.join(cdir, "beast-client"),
        FLOOR: os.path.join(cdir, "raw-client"),
    }


def server_bin(profile):
    return os.path.join(BENCH, "target", profile, "pjws-echo-server")


# Metrics shown per workload: (json key, label, unit, higher_is_better).
M_MSGS = ("msgs_per_s", "msgs/s", "", True)
M_MB = ("mb_per_s", "MB/s", "", True)
M_CPU = ("cpu_us_per_msg", "CPU µs/msg", "", False)
M_RTT50 = ("rtt_median_us", "RTT median µs", "", False)
M_RTT99 = ("rtt_p99_us", "RTT p99 µs", "", False)
M_LAT50 = ("lat_median_us", "latency median µs", "", False)
M_LAT99 = ("lat_p99_us", "latency p99 µs", "", False)
M_CBUSY = ("client_busy", "client busy (CPU ÷ interval)", "", False)
M_CONN = ("connect_total_ms", "connect all ms", "", False)
M_RSS = ("rss_per_conn_b", "VmRSS B/conn", "", False)
M_DATA = ("vmdata_per_conn_b", "VmData B/conn", "", False)
M_MALLOC = ("malloc_per_conn_b", "malloc B/conn", "", False)
# Derived per run (see `with_server_cpu`): the echo server's CPU per message
# over the same interval, and client + server.
M_SCPU = ("server_cpu_us_per_msg", "server CPU µs/msg", "", False)
M_TCPU = ("total_cpu_us_per_msg", "client + server CPU µs/msg", "", False)
CPU_ROWS = [M_CPU, M_SCPU, M_TCPU]

# Workloads: full-size arguments, the tiny smoke-test overrides, metrics.
WORKLOADS = [
    dict(name="pingpong", args=["--workload", "pingpong", "--n", "50000", "--warmup", "2000", "--size", "64"],
         smoke=["--n", "300", "--warmup", "20"], metrics=[M_MSGS, M_RTT50, M_RTT99, *CPU_ROWS]),
    dict(name="stream", args=["--workload", "stream", "--n", "200000", "--size", "640"],
         smoke=["--n", "3000"], metrics=[M_MSGS, M_MB, *CPU_ROWS]),
    dict(name="bulk-60KiB", args=["--workload", "bulk", "--n", "2000", "--size", "61440"],
         smoke=["--n", "30"], metrics=[M_MB, *CPU_ROWS]),
    dict(name="bulk-1MiB", args=["--workload", "bulk", "--n", "200", "--size", "1048576"],
         smoke=["--n", "4"], metrics=[M_MB, *CPU_ROWS]),
    dict(name="conns-1k", args=["--workload", "conns", "--n", "1000"],
         smoke=["--n", "100"], metrics=[M_CONN, M_RSS, M_DATA, M_MALLOC]),
    dict(name="conns-10k", args=["--workload", "conns", "--n", "10000"],
         smoke=["--n", "300"], metrics=[M_CONN, M_RSS, M_DATA, M_MALLOC]),
    dict(name="fanout", args=["--workload", "fanout", "--conns", "200", "--rate", "50", "--duration", "5"],
         smoke=["--conns", "20", "--duration", "0.3"], metrics=[*CPU_ROWS, M_LAT50, M_LAT99, M_CBUSY]),
    dict(name="wss-stream", tls=True, args=["--workload", "stream", "--n", "200000", "--size", "640"],
         smoke=["--n", "2000"], metrics=[M_MSGS, M_MB, *CPU_ROWS]),
    dict(name="wss-bulk-60KiB", tls=True, args=["--workload", "bulk", "--n", "2000", "--size", "61440"],
         smoke=["--n", "20"], metrics=[M_MB, *CPU_ROWS]),
    dict(name="wss-bulk-1MiB", tls=True, args=["--workload", "bulk", "--n", "200", "--size", "1048576"],
         smoke=["--n", "3"], metrics=[M_MB, *CPU_ROWS]),
    # The typical deployment: many speech streams over TLS (no target in
    # the list below; reported beside the ws:// fanout).
    dict(name="wss-fanout", tls=True,
         args=["--workload", "fanout", "--conns", "200", "--rate", "50", "--duration", "5"],
         smoke=["--conns", "20", "--duration", "0.3"], metrics=[*CPU_ROWS, M_LAT50, M_LAT99, M_CBUSY]),
]

# The ratio targets against the best peer: workload -> (label,
# metric, higher is better, factor). Throughput targets fall back to client
# CPU per message when the server was saturated; fanout's is on CPU.
RATIO_TARGETS = {
    "stream": ("stream ≥ %g× best peer msgs/s", "msgs_per_s", True, 1.5),
    "bulk-1MiB": ("bulk 1 MiB ≥ %g× best peer MB/s", "mb_per_s", True, 1.3),
    "bulk-60KiB": ("bulk 60 KiB ≥ %g× best peer MB/s", "mb_per_s", True, 1.3),
    "fanout": ("fanout ≤ %g× best peer CPU per message", "cpu_us_per_msg", False, 0.6),
    "wss-stream": ("wss:// stream ≥ %g× best peer msgs/s", "msgs_per_s", True, 1.2),
    "wss-bulk-60KiB": ("wss:// bulk 60 KiB ≥ %g× best peer MB/s", "mb_per_s", True, 1.2),
    "wss-bulk-1MiB": ("wss:// bulk 1 MiB ≥ %g× best peer MB/s", "mb_per_s", True, 1.2),
}


def cpu_asked(name, best_cpu):
    """The client CPU per message `name`'s ratio target asks for, given the best peer's."""
    _, _, higher, factor = RATIO_TARGETS[name]
    return best_cpu / factor if higher else best_cpu * factor


# Callgrind: the same workload at two sizes; (Ir(N2) - Ir(N1)) / (N2 - N1)
# cancels start-up, connect and handshake.
CALLGRIND = [
    dict(name="pingpong", args=["--workload", "pingpong", "--warmup", "100", "--size", "64"], n=(2000, 10000),
         smoke_n=(50, 150)),
    dict(name="stream", args=["--workload", "stream", "--size", "640"], n=(10000, 50000), smoke_n=(200, 600)),
]


def merge_args(base, over):
    """Overrides `--key value` pairs of `base` with those of `over`."""
    out = list(base)
    for i in range(0, len(over), 2):
        k, v = over[i], over[i + 1]
        if k in out:
            out[out.index(k) + 1] = v
        else:
            out += [k, v]
    return out


def log(msg):
    print(msg, flush=True)


# ---- machine and version information ---------------------------------------

def sh(cmd, default=""):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return default


CC_SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"
CC_AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"


def read_cc(path=CC_SYSCTL):
    """The congestion control in use (with CC_AVAILABLE: those loaded)."""
    try:
        return open(path).read().strip()
    except OSError:
        return ""


def write_cc(name):
    with open(CC_SYSCTL, "w") as f:
        f.write(name)


class CongestionControl:
    """Sets the system's TCP congestion control for the run and restores
    it afterwards (it is a system-wide setting; new sockets take it).
    Loopback has no fq qdisc, so a pacing algorithm such as BBR paces with
    the socket's own timers, which changes the kernel work each write
    costs: the figures depend on it (bench/README.md). `before` is the
    system's setting."""

    def __init__(self, want):
        self.want, self.before, self.changed = want, read_cc(), False

    def __enter__(self):
        if not self.want or self.want == self.before:
            return self
        if self.want not in read_cc(CC_AVAILABLE).split():
            sh("modprobe tcp_%s" % self.want)
        try:
            write_cc(self.want)
        except OSError as e:
            raise SystemExit("--cc %s: cannot set %s (%s; root is needed)" % (self.want, CC_SYSCTL, e))
        now = read_cc()
        if now != self.want:
            raise SystemExit("--cc %s: the kernel kept %s" % (self.want, now))
        self.changed = True
        log("TCP congestion control: %s for this run (system default %s, restored at the end)" % (
            self.want, self.before))
        return self

    def __exit__(self, *exc):
        if self.changed and self.before:
            try:
                write_cc(self.before)
            except OSError as e:
                log("! could not restore TCP congestion control %s: %s" % (self.before, e))
        return False


def machine_info():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1048576)
    except OSError:
        pass
    tt = ""
    try:
        lock = open(os.path.join(BENCH, "Cargo.lock")).read()
        m = re.search(r'name = "tokio-tungstenite"\nversion = "([^"]+)"', lock)
        tt = m.group(1) if m else ""
    except OSError:
        pass
    dirty = sh("git -C %s status --porcelain -- src Cargo.toml build.rs include | head -1" % ROOT)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total": mem,
        "kernel": platform.release(),
        "tcp_cc": read_cc(),
        "lib_commit": sh("git -C %s rev-parse --short HEAD" % ROOT) + (" + uncommitted changes" if dirty else ""),
        "rustc": sh("rustc --version"),
        "gcc": sh("gcc --version | head -1"),
        "libwebsockets": sh("pkg-config --modversion libwebsockets").rstrip("-"),
        "tokio_tungstenite": tt,
        "boost": sh("grep -m1 'define BOOST_LIB_VERSION' /usr/include/boost/version.hpp | cut -d'\"' -f2"),
        "valgrind": sh("valgrind --version"),
    }


# ---- echo server --------------------------------------------------------------

def server_drain_selftest(port, total=200 << 20, frame=64 << 10, timeout=30):
    """The echo server keeps reading a client that does not read its
    echoes (see write_out in server/src/main.rs): `total` bytes of masked
    binary frames go out without a single read, which a server that stopped
    reading while its write was blocked would not take (the kernel buffers
    on both sides hold far less); then every echo is read back and checked.
    Returns None, or what went wrong."""
    import base64
    import socket
    import struct
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /drain HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                   % (port, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return "connection closed during the handshake"
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            return "handshake refused: %r" % head[:80]
        rest = head[head.index(b"\r\n\r\n") + 4:]
        # A zero masking key leaves the payload as it is on the wire.
        payload = bytes(range(256)) * (frame // 256)
        wire = bytes([0x82, 0xFF]) + struct.pack(">Q", frame) + b"\0\0\0\0" + payload
        n = total // frame
        try:
            for _ in range(n):
                s.sendall(wire)
        except socket.timeout:
            return "the server stopped reading: %d MiB could not be sent without reading" % (total >> 20)
        echo = bytes([0x82, 0x7F]) + struct.pack(">Q", frame) + payload
        buf = bytearray(rest)
        for i in range(n):
            while len(buf) < len(echo):
                chunk = s.recv(1 << 20)
                if not chunk:
                    return "connection closed after %d of %d echoes" % (i, n)
                buf += chunk
            if buf[:len(echo)] != echo:
                return "echo %d differs" % i
            del buf[:len(echo)]
        return None
    except OSError as e:
        return "socket error: %s" % e
    finally:
        s.close()


class Server:
    def __init__(self, binary, cpu, tls=None, logdir=BUILD, extra=()):
        self.binary, self.cpu, self.tls, self.extra = binary, cpu, tls, list(extra)
        self.logpath = os.path.join(logdir, "server-%s%s.log" % ("wss" if tls else "ws", "-x" if extra else ""))
        self.proc = None
        self.port = None
        self.log_pos = 0

    def start(self):
        cmd = ([] if self.cpu is None else ["taskset", "-c", str(self.cpu)]) + [self.binary, "--listen", "127.0.0.1:0"]
        if self.tls:
            cmd += ["--tls", self.tls[0], self.tls[1]]
        cmd += self.extra
        self.logf = open(self.logpath, "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logf, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening (\d+)", line or "")
        if not m:
            raise RuntimeError("echo server did not start: %r (see %s)" % (line, self.logpath))
        self.port = int(m.group(1))
        self.log_pos = os.path.getsize(self.logpath)
        self.cmd = cmd

    def ensure(self):
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                log("  ! echo server exited (%s), restarting" % self.proc.returncode)
            self.start()

    @property
    def pid(self):
        return self.proc.pid

    def cpu_s(self):
        """utime + stime from /proc/PID/stat, in seconds."""
        try:
            data = open("/proc/%d/stat" % self.proc.pid).read()
            f = data[data.rindex(")") + 2:].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    def new_errors(self):
        """Server log lines written since the last call."""
        self.logf.flush()
        try:
            with open(self.logpath) as f:
                f.seek(self.log_pos)
                text = f.read()
                self.log_pos = f.tell()
        except OSError:
            return []
        return [l for l in text.splitlines() if l.strip()]

    def url(self):
        return "%s://127.0.0.1:%d/bench" % ("wss" if self.tls else "ws", self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_cert(dirpath):
    """Self-signed EC certificate for 127.0.0.1 (IP and DNS SANs)."""
    if not shutil.which("openssl"):
        return None
    os.makedirs(dirpath, exist_ok=True)
    cert, key = os.path.join(dirpath, "cert.pem"), os.path.join(dirpath, "key.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "3650", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost"],
            capture_output=True, text=True)
        if r.returncode != 0:
            log("  ! openssl req failed: " + r.stderr.strip())
            return None
    return cert, key


# ---- one client run -----------------------------------------------------------

def parse_json_line(out):
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def machine_busy_s():
    """CPU-seconds all CPUs spent busy so far (/proc/stat)."""
    try:
        f = open("/proc/stat").readline().split()
        v = [int(x) for x in f[1:9]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_client(client, binary, wl, args, server, cpu, timeout, cert, rep):
    cmd = ([] if cpu is None else ["taskset", "-c", str(cpu)]) + [binary] + args
    cmd += ["--url", server.url(), "--server-pid", str(server.pid)]
    if wl.get("tls") and cert:
        cmd += ["--ca", cert[0]]
    server.new_errors()
    s0 = server.cpu_s()
    m0, c0 = machine_busy_s(), children_cpu_s()
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=client_env(client))
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = "timed out after %ds" % timeout, -9
    wall = time.monotonic() - t0
    s1 = server.cpu_s()
    m1, c1 = machine_busy_s(), children_cpu_s()
    rec = parse_json_line(out) or {}
    rec["client"] = client
    # CPU the rest of the machine used meanwhile (other users' jobs), in CPUs.
    others = ((m1 - m0) - (c1 - c0) - (s1 - s0)) / wall if wall > 0 else float("nan")
    rec.update(kind="run", name=wl["name"], rep=rep, exit_code=rc, wall_s=round(wall, 3),
               server_cpu_run_s=round(s1 - s0, 3), client_cpu_run_s=round(c1 - c0, 3),
               others_cpus=round(max(others, 0.0), 2),
               cmd=" ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd))
    errs = server.new_errors()
    if errs:
        rec["server_log"] = errs[:5]
        if any("protocol error" in e for e in errs):
            rec["ok"] = False
            rec["error"] = (rec.get("error", "") + " server reported: " + errs[0]).strip()
    if rc != 0 or not rec.get("ok"):
        rec["ok"] = False
        if "error" not in rec:
            rec["error"] = ("exit code %d; stderr: %s" % (rc, err.strip()[-400:])).strip()
    return rec


# ---- callgrind ----------------------------------------------------------------

def callgrind_total(path):
    try:
        for line in open(path):
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_callgrind(client, binary, cg, n1, n2, server, cpu, outdir, timeout):
    irs = []
    files = []
    for n in (n1, n2):
        f = os.path.join(outdir, "callgrind.%s.%s.%d.out" % (client, cg["name"], n))
        cmd = ([] if cpu is None else ["taskset", "-c", str(cpu)])
        cmd += ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + f, binary]
        cmd += merge_args(cg["args"], ["--n", str(n)]) + ["--url", server.url()]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=client_env(client))
            rec = parse_json_line(p.stdout) or {}
            ok = p.returncode == 0 and rec.get("ok")
            err = rec.get("error") or p.stderr.strip()[-300:]
        except subprocess.TimeoutExpired:
            ok, err = False, "timed out after %ds" % timeout
        ir = callgrind_total(f) if ok else None
        if ir is None:
            return dict(kind="callgrind", client=client, name=cg["name"], ok=False,
                        error="N=%d: %s" % (n, err), n1=n1, n2=n2)
        irs.append(ir)
        files.append(f)
    return dict(kind="callgrind", client=client, name=cg["name"], ok=True, n1=n1, n2=n2, ir1=irs[0], ir2=irs[1],
                ir_per_msg=round((irs[1] - irs[0]) / (n2 - n1), 1), out_file1=os.path.relpath(files[0], ROOT),
                out_file=os.path.relpath(files[1], ROOT))


def callgrind_funcs(path):
    """{function: [self Ir, object]} from callgrind_annotate; pieces that
    callgrind attributes to other source files (inlining) are summed."""
    if not shutil.which("callgrind_annotate"):
        return {}
    r = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", path], capture_output=True, text=True)
    text = r.stdout
    i = text.find("file:function")
    text = text[i:] if i >= 0 else ""
    j = text.find("Auto-annotated")
    text = text[:j] if j >= 0 else text
    agg = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        rest = m.group(3).strip()
        if "PROGRAM TOTALS" in rest:
            continue
        obj = ""
        mo = re.search(r"\s*\[([^\]]*)\]\s*$", rest)
        if mo:
            obj = os.path.basename(mo.group(1))
            rest = rest[:mo.start()]
        fn = (rest.split(":", 1)[1] if ":" in rest and not rest.startswith("::") else rest).strip()
        ent = agg.setdefault(fn, [0, obj])
        ent[0] += ir
        if obj and not ent[1]:
            ent[1] = obj
    return agg


def callgrind_top(path1, path2, n1, n2, limit=25):
    """Per-message self Ir by function: (Ir(N2) - Ir(N1)) / (N2 - N1) per
    function, so start-up and handshake cancel as in the totals."""
    f1, f2 = callgrind_funcs(path1), callgrind_funcs(path2)
    rows = []
    for fn, (ir2, obj) in f2.items():
        d = (ir2 - f1.get(fn, [0])[0]) / (n2 - n1)
        rows.append([round(d, 1), fn, obj])
    rows.sort(reverse=True)
    return rows[:limit]


def make_top(rec):
    f1 = rec.get("out_file1") or re.sub(r"\.%d\.out$" % rec["n2"], ".%d.out" % rec["n1"], rec["out_file"])
    p1, p2 = os.path.join(ROOT, f1), os.path.join(ROOT, rec["out_file"])
    if not (os.path.exists(p1) and os.path.exists(p2)):
        return None
    # Profiles of a later run overwrite these paths: use them only if they
    # are the ones this record counted.
    if (callgrind_total(p1), callgrind_total(p2)) != (rec.get("ir1"), rec.get("ir2")):
        return None
    rows = callgrind_top(p1, p2, rec["n1"], rec["n2"])
    if not rows:
        return None
    return dict(kind="callgrind_top", client=rec["client"], name=rec["name"], n1=rec["n1"], n2=rec["n2"],
                ir_per_msg=rec["ir_per_msg"], files=[f1, rec["out_file"]], rows=rows)


# ---- criterion micro-benchmarks ----------------------------------------------------

def run_micro(smoke, cpu, timeout):
    cmd = ["cargo", "bench", "--manifest-path", os.path.join(BENCH, "Cargo.toml"), "-p", "pjws-echo-server",
           "-p", "pjws-tungstenite-client", "-p", "pjwebsock-bench", "--bench", "micro"]
    if smoke:
        cmd += ["--profile", "smoke", "--", "--test"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    recs = [dict(kind="micro_run", ok=p.returncode == 0, exit_code=p.returncode, wall_s=round(time.monotonic() - t0, 1),
                 cmd=" ".join(cmd), **({} if p.returncode == 0 else {"error": (p.stderr or p.stdout)[-600:]}))]
    if smoke or p.returncode != 0:
        return recs
    for bj in sorted(glob.glob(os.path.join(BENCH, "target", "criterion", "**", "new", "benchmark.json"), recursive=True)):
        try:
            b = json.load(open(bj))
            e = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
        except (OSError, ValueError):
            continue
        ns = e["median"]["point_estimate"]
        lo = e["median"]["confidence_interval"]["lower_bound"]
        hi = e["median"]["confidence_interval"]["upper_bound"]
        rec = dict(kind="micro", ok=True, id=b.get("full_id") or b.get("title"), ns=ns, ns_lo=lo, ns_hi=hi)
        tp = b.get("throughput") or {}
        if "Bytes" in tp or "BytesDecimal" in tp:
            nb = tp.get("Bytes") or tp.get("BytesDecimal")
            rec["gib_per_s"] = nb / ns * 1e9 / 2**30
        elif "Elements" in tp:
            rec["m_per_s"] = tp["Elements"] / ns * 1e3
        recs.append(rec)
    return recs


# ---- report -------------------------------------------------------------------

def fmt(v):
    if v is None or v != v:
        return "–"
    a = abs(v)
    if a >= 1e6:
        return "%.3gM" % (v / 1e6) if a < 1e8 else "%.0fM" % (v / 1e6)
    if a >= 1e4:
        return "%.0f" % v
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    return "%.3g" % v


def stats(values):
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals), len(vals)


def with_server_cpu(r):
    """The run with the server's CPU per message (server CPU time over the
    client's measured interval, divided by the client's message count) and
    client + server added. Over loopback the sending process's system call
    also runs the receiving socket's TCP processing and, if the receiver is
    asleep, its wake-up: kernel time moves between the two processes with
    how each waits and writes. The sum tells less work from work billed to
    the other side."""
    cli, srv, per = r.get("client_cpu_s"), r.get("server_cpu_s"), r.get("cpu_us_per_msg")
    if not (cli and per) or srv is None:
        return r
    s = srv * per / cli
    return dict(r, server_cpu_us_per_msg=s, total_cpu_us_per_msg=per + s)


def summarize(records):
    """{(name, client): {metric: (median, min, max, n)}} over ok runs."""
    groups = {}
    for r in records:
        if r.get("kind") != "run":
            continue
        r = with_server_cpu(r)
        groups.setdefault((r["name"], r["client"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        ok = [r for r in runs if r.get("ok")]
        d = {"_runs": len(runs), "_ok": len(ok),
             "_failed": [r.get("error", "?") for r in runs if not r.get("ok")],
             "_saturated": sum(1 for r in ok if r.get("server_saturated")),
             "_server_busy": stats([r.get("server_busy") for r in ok])}
        keys = set()
        for r in ok:
            keys.update(k for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        for k in keys:
            d[k] = stats([r.get(k) for r in ok])
        out[key] = d
    return out


def clients_in(records):
    seen = {r["client"] for r in records if r.get("kind") in ("run", "callgrind")}
    return [c for c in CLIENT_ORDER if c in seen] + sorted(seen - set(CLIENT_ORDER))


def best_peer(summ, name, key, higher, clients):
    best = None
    for c in filter(is_peer, clients):
        s = summ.get((name, c), {}).get(key)
        if s and (best is None or (s[0] > best[0] if higher else s[0] < best[0])):
            best = (s[0], c)
    return best


def write_report(records, info, path, jsonl_path, argv):
    summ = summarize(records)
    clients = clients_in(records)
    peers = [c for c in clients if is_peer(c)]
    own = [c for c in clients if c in OWN]
    names = []
    for r in records:
        if r.get("kind") == "run" and r["name"] not in names:
            names.append(r["name"])
    reps = max([r.get("rep", 0) for r in records if r.get("kind") == "run"] + [-1]) + 1
    L = []
    L.append("# libpjwebsock benchmark results\n")
    L.append("Generated by `make bench` (`bash bench/run.sh` → `python3 bench/run.py`); "
             "see bench/README.md for what each workload does. Regenerate this file from the raw data "
             "with `python3 bench/run.py --report %s%s`.\n" % (
                 os.path.relpath(jsonl_path, ROOT),
                 "" if os.path.basename(path) == "RESULTS.md" else " --results-md " + os.path.relpath(path, ROOT)))
    L.append("| | |\n|---|---|")
    L.append("| date | %s |" % info.get("date", ""))
    L.append("| machine | %s CPUs (%s), %s, Linux %s |" % (info.get("nproc"), info.get("cpu_model"),
                                                       info.get("mem_total"), info.get("kernel")))
    L.append("| pinning | %s |" % info.get("pinning", ""))
    if not info.get("tcp_cc"):
        L.append("| TCP congestion control | not recorded (the run predates the record; see bench/README.md) |")
    else:
        L.append("| TCP congestion control | %s%s |" % (info["tcp_cc"], (
            " (set for the run with `--cc`; the system default is %s)" % info["cc_default"])
            if info.get("cc_default") and info["cc_default"] != info["tcp_cc"] else " (the system default)"))
    L.append("| libpjwebsock | commit %s |" % info.get("lib_commit", ""))
    L.append("| peers | tokio-tungstenite %s (crates.io), libwebsockets %s (Debian)%s |" % (
        info.get("tokio_tungstenite"), info.get("libwebsockets"),
        (", Boost.Beast %s (Debian)" % info["boost"]) if "boost-beast" in clients and info.get("boost") else ""))
    L.append("| toolchain | %s; %s; %s |" % (info.get("rustc"), info.get("gcc"), info.get("valgrind")))
    L.append("| command | `%s` |" % " ".join(argv))
    L.append("| repetitions | %d, interleaved (client order rotates every repetition) |" % reps)
    L.append("| raw data | `%s` |" % os.path.relpath(jsonl_path, ROOT))
    L.append("")
    L.append("Cells: median (min–max) over the repetitions. Ratio = peer ÷ libpjwebsock, medians "
             "(for msgs/s and MB/s a ratio below 1 means libpjwebsock is faster; for CPU, latency "
             "and memory a ratio above 1 means libpjwebsock uses less). Throughput = N ÷ (first "
             "send → last verified echo). CPU = getrusage of the whole client process (all "
             "threads) over that interval ÷ messages. MB/s counts payload bytes one way "
             "(each byte also comes back). \"srv busy\" = the echo server's CPU time ÷ the interval "
             "(max over repetitions; ≥ 0.9 is reported as saturated). \"server CPU µs/msg\" = the "
             "server's CPU time over the same interval ÷ the same messages; \"client + server\" is "
             "their sum. Over loopback a process's send also runs the receiving socket's TCP "
             "processing and, when the receiver is asleep in epoll, its wake-up, so kernel time "
             "moves between client and server with how each one waits and writes (a client that "
             "sleeps between bursts makes the server pay to wake it; one busy in a long write "
             "processes the server's segments itself): the sum tells less work from work billed "
             "to the other side.\n")

    oth = [r.get("others_cpus") for r in records if r.get("kind") == "run" and r.get("others_cpus") is not None]
    if oth:
        L.append("Machine load from other processes during the runs (CPUs kept busy outside this client and "
                 "the server, from /proc/stat): median %.2f, max %.2f of %s CPUs. On a loaded machine the "
                 "client shares its CPU with other jobs; latency (pingpong, fanout) suffers most: a woken "
                 "process may wait for the other job's time slice (≈ 3 ms p99 here).\n" % (
                     statistics.median(oth), max(oth), info.get("nproc")))

    def cell(s):
        if not s:
            return "–"
        med, lo, hi, n = s
        return "%s (%s–%s)" % (fmt(med), fmt(lo), fmt(hi)) if n > 1 else fmt(med)

    wl_by_name = {w["name"]: w for w in WORKLOADS}
    L.append("## Workloads\n")
    ratio_hdr = " | ".join("%s ÷ %s" % (p, "pj-poll" if o == PJP else "pj") for o in own for p in peers)
    hdr = "| workload | metric | " + " | ".join(clients) + " | " + ratio_hdr + " |"
    L.append(hdr)
    L.append("|" + "---|" * (2 + len(clients) + len(peers) * len(own)))
    notes = []
    for name in names:
        wl = wl_by_name.get(name, {"metrics": [M_MSGS, M_CPU]})
        for (key, label, _u, _hb) in wl["metrics"]:
            row = ["**%s**" % name, label]
            for c in clients:
                d = summ.get((name, c))
                if not d:
                    row.append("–")
                elif not d["_ok"]:
                    row.append("FAILED")
                else:
                    row.append(cell(d.get(key)))
            for o in own:
                pj = summ.get((name, o), {}).get(key)
                for p in peers:
                    ps = summ.get((name, p), {}).get(key)
                    row.append("%.2f" % (ps[0] / pj[0]) if ps and pj and pj[0] else "–")
            L.append("| " + " | ".join(row) + " |")
        srow = ["", "srv busy (max)"]
        for c in clients:
            d = summ.get((name, c))
            sb = d and d.get("_server_busy")
            srow.append(("%.2f" % sb[2] + (" ⚠ saturated" if d["_saturated"] else "")) if sb else "–")
        L.append("| " + " | ".join(srow + [""] * (len(peers) * len(own))) + " |")
        for c in clients:
            d = summ.get((name, c))
            if d and d["_failed"]:
                notes.append("- %s / %s: %d of %d runs failed: %s" % (name, c, len(d["_failed"]), d["_runs"],
                                                                    d["_failed"][0][:300]))
    L.append("")
    if notes:
        L.append("Notes:\n")
        L.extend(sorted(set(notes)))
        L.append("")

    # Callgrind
    cgs = [r for r in records if r.get("kind") == "callgrind"]
    cg_tab = {}
    if cgs:
        L.append("## Instructions per message (callgrind)\n")
        L.append("`valgrind --tool=callgrind` on the whole client process (all threads, the library's event "
                 "thread included), run twice: Ir/msg = (Ir(N2) − Ir(N1)) ÷ (N2 − N1), so start-up, "
                 "connect and handshake cancel out. The echo server runs natively.\n")
        L.append("| workload | N1 → N2 | " + " | ".join(clients) + " | " + ratio_hdr + " |")
        L.append("|" + "---|" * (2 + len(clients) + len(peers) * len(own)))
        for cg in CALLGRIND:
            rs = {r["client"]: r for r in cgs if r["name"] == cg["name"]}
            if not rs:
                continue
            n12 = next(iter(rs.values()))
            row = [cg["name"], "%s → %s" % (n12.get("n1"), n12.get("n2"))]
            for c in clients:
                r = rs.get(c)
                row.append(("%.0f" % r["ir_per_msg"]) if r and r.get("ok") else ("FAILED" if r else "–"))
                if r and r.get("ok"):
                    cg_tab[(cg["name"], c)] = r["ir_per_msg"]
            for o in own:
                pj = cg_tab.get((cg["name"], o))
                for p in peers:
                    v = cg_tab.get((cg["name"], p))
                    row.append("%.2f" % (v / pj) if v and pj else "–")
            L.append("| " + " | ".join(row) + " |")
        for r in cgs:
            if not r.get("ok"):
                L.append("\n- callgrind %s / %s failed: %s" % (r["name"], r["client"], r.get("error", "")[:300]))
        L.append("")

    # Targets
    L.append("## Targets for libpjwebsock\n")
    L.append("Informational: timing never fails a build. ✔ met, ✘ not met, ? not measured. Throughput targets "
             "compare medians; when the echo server was saturated in a workload (busy ≥ 0.9) it, not the client, "
             "set the pace, and the client's CPU µs per message decides instead (the best peer's CPU ÷ ours must "
             "reach the factor). \"No worse than\" targets count a better median or overlapping min–max "
             "ranges. Each target is evaluated for both ways of running the library's own event loop: its own "
             "thread (the default, `libpjwebsock`) and poll mode (`libpjwebsock-poll`: the application's thread "
             "runs the loop in `pj_websock_poll()`, as each peer client runs its own event loop).\n")
    L.append("| target | " + " | ".join("%s (%s)" % (o, "poll mode" if o == PJP else "thread mode") for o in own)
             + " |")
    L.append("|---|" + "---|" * len(own))

    def row(desc, results):
        cells = ["%s %s" % (text, "?" if ok is None else ("✔" if ok else "✘")) for text, ok in results]
        L.append("| %s | %s |" % (desc, " | ".join(cells)))

    def saturated(name):
        return any(summ.get((name, c), {}).get("_saturated") for c in clients)

    def ratio_target(o, name, key, higher, factor):
        pj = summ.get((name, o), {}).get(key)
        bp = best_peer(summ, name, key, higher, clients)
        if not pj or not bp:
            return "–", None
        r = pj[0] / bp[0] if bp[0] else float("nan")
        text = "%s vs %s (%s): %.2f×" % (fmt(pj[0]), fmt(bp[0]), bp[1], r)
        ok = r >= factor if higher else r <= factor
        if higher and saturated(name):
            pc = summ.get((name, o), {}).get("cpu_us_per_msg")
            bc = best_peer(summ, name, "cpu_us_per_msg", False, clients)
            if pc and bc and pc[0]:
                rc = bc[0] / pc[0]
                text += "; server saturated, client CPU µs/msg %s vs %s (%s): %.2f×" % (
                    fmt(pc[0]), fmt(bc[0]), bc[1], rc)
                ok = rc >= factor
        return text, ok

    def no_worse(o, name, key, higher, against_best=True):
        """Better median or overlapping ranges than the best peer (or every peer)."""
        pj = summ.get((name, o), {}).get(key)
        others = [c for c in peers if summ.get((name, c), {}).get(key)]
        if against_best:
            bp = best_peer(summ, name, key, higher, clients)
            others = [bp[1]] if bp else []
        if not pj or not others:
            return "–", None
        ok, parts = True, []
        for c in others:
            v = summ[(name, c)][key]
            better = pj[0] >= v[0] if higher else pj[0] <= v[0]
            overlap = pj[1] <= v[2] and v[1] <= pj[2]
            ok = ok and (better or overlap)
            parts.append("%s: %s (%s–%s)%s" % (c, fmt(v[0]), fmt(v[1]), fmt(v[2]),
                                              "" if better else (", ranges overlap" if overlap else "")))
        return "%s (%s–%s) vs %s" % (fmt(pj[0]), fmt(pj[1]), fmt(pj[2]), "; ".join(parts)), ok

    def at_most(o, cg_name, limit):
        v = cg_tab.get((cg_name, o))
        return ("%.0f" % v if v else "–"), (None if v is None else v <= limit)

    def each(desc, f, *args):
        row(desc, [f(o, *args) for o in own])

    def ratio(name):
        label, key, higher, factor = RATIO_TARGETS[name]
        each(label % factor, ratio_target, name, key, higher, factor)

    def micro_ns(ident):
        return next((r["ns"] for r in micro_recs if r.get("id") == ident and r.get("ok")), None)

    def conns(o, name, what):
        d = summ.get((name, o))
        if not d or not d.get("rss_per_conn_b"):
            return "–", None
        rss, vd = d["rss_per_conn_b"][0], d.get("vmdata_per_conn_b", (float("nan"),))[0]
        ml = d.get("malloc_per_conn_b", (float("nan"),))[0]
        if what == "rss":
            return "%.0f B" % rss, rss <= 4096
        if what == "alloc":
            return "VmData %.0f B, malloc %.0f B" % (vd, ml), vd <= 8192 and ml <= 8192
        thr, lt = d.get("threads"), d.get("loop_threads")
        if lt:
            where = ("its own loop thread" if lt[0] == 1 else "%s loop threads" % fmt(lt[0])) if lt[0] else \
                "the polling (main) thread"
            return ("%d connections verified on %s (%s threads in the process)" % (
                int(d.get("n", (0,))[0]), where, fmt(thr[0]) if thr else "?"), d["_ok"] > 0 and lt[0] <= 1)
        return ("%d connections verified, %s threads in the process" % (
            int(d.get("n", (0,))[0]), fmt(thr[0]) if thr else "?"), d["_ok"] > 0)

    micro_recs = [r for r in records if r.get("kind") == "micro"]
    ratio("stream")
    each("stream ≤ 2,000 instructions/msg", at_most, "stream", 2000)
    each("pingpong ≤ 3,500 instructions/msg", at_most, "pingpong", 3500)
    each("pingpong msgs/s no worse than any peer", no_worse, "pingpong", "msgs_per_s", True, False)
    ratio("bulk-1MiB")
    ratio("bulk-60KiB")
    cname = next((n for n in ("conns-10k", "conns-1k") if any(summ.get((n, o)) for o in own)), None)
    if cname:
        each("%s: ≤ 4 KiB resident per idle connection" % cname, conns, cname, "rss")
        each("%s: ≤ 8 KiB allocated per idle connection" % cname, conns, cname, "alloc")
        if cname == "conns-10k":
            each("10,000 concurrent connections on one event-loop thread", conns, cname, "threads")
    each("1,000 connects no slower than the best peer (ms)", no_worse, "conns-1k", "connect_total_ms", False)
    ratio("fanout")
    each("fanout p99 latency no worse than the best peer (µs)", no_worse, "fanout", "lat_p99_us", False)
    ratio("wss-stream")
    ratio("wss-bulk-60KiB")
    ratio("wss-bulk-1MiB")
    m, c = micro_ns("mask/1MiB/encode_frame"), micro_ns("mask/1MiB/memcpy")
    lib = ("%.0f %%" % (100.0 * c / m) if m and c else "–", None if not (m and c) else c / m >= 0.5)
    row("masking (encode_frame, 1 MiB) ≥ 50 % of memcpy bandwidth", [lib] * len(own))
    for kind in ("ascii", "mostly_ascii"):
        t = micro_ns("utf8/1MiB/feed_4KiB_pieces/%s" % kind)
        gbs = (1 << 20) / t if t else None  # bytes per ns = GB/s
        row("UTF-8 validation ≥ 2 GB/s (%s text, streamed in 4 KiB pieces)" % kind.replace("_", " "),
            [("%.1f GB/s" % gbs if gbs else "–", None if gbs is None else gbs >= 2.0)] * len(own))
    L.append("")
    floors = []
    for name in ("stream", "bulk-60KiB", "bulk-1MiB", "fanout"):
        fl = summ.get((name, FLOOR), {}).get("cpu_us_per_msg")
        bp = best_peer(summ, name, "cpu_us_per_msg", False, clients)
        if not (fl and bp):
            continue
        need = cpu_asked(name, bp[0])
        floors.append("- **%s**: floor %s µs; the best peer (%s) %s µs, %.2f× the floor; the target asks for %s µs, "
                      "%.2f× the floor; %s." % (
                          name, cell(fl), bp[1], fmt(bp[0]), bp[0] / fl[0], fmt(need), need / fl[0], "; ".join(
                              "%s %s µs, %.2f× the floor" % (o, fmt(summ[(name, o)]["cpu_us_per_msg"][0]),
                                                            summ[(name, o)]["cpu_us_per_msg"][0] / fl[0])
                              for o in own if summ.get((name, o), {}).get("cpu_us_per_msg"))))
    if floors:
        L.append("Floors: the `%s` client (no WebSocket library, one thread; see bench/README.md, \"Floor\") did "
                 "the same ws:// work with only the system calls and byte handling any client needs: its CPU per "
                 "message approximates the kernel's share plus the payload generation, masking and verification "
                 "every client does. It is a simple client, not a proven lower bound (a library that batches "
                 "better can come in under it, and run-to-run noise moves it like every other figure), but a "
                 "target asking for well under it asks a library to cost less than doing nothing of its own. "
                 "Client CPU µs per message (median, min–max):\n" % FLOOR)
        L.extend(floors)
        L.append("")

    # Where the instructions go
    tops = [r for r in records if r.get("kind") == "callgrind_top" and "n1" in r]
    for t in tops:
        L.append("## Where libpjwebsock's instructions go (%s, callgrind)\n" % t["name"])
        L.append("Self instructions per message by function, computed like the totals: (Ir(N2) − Ir(N1)) ÷ "
                 "(N2 − N1) per function, N1 = %s, N2 = %s (`callgrind_annotate` of `%s` and `%s`; code inlined "
                 "from other source files summed into its function). Total %.0f Ir/msg. Includes the client's own "
                 "payload generation and verification (`fill_msg`, `on_rx_*`, `memcmp`, `memcpy`), which every "
                 "client does alike. Kernel work (system calls, wake-ups) is not counted.\n"
                 % (t["n1"], t["n2"], t["files"][0], t["files"][1], t["ir_per_msg"]))
        L.append("| Ir/msg | % | function | object |")
        L.append("|---|---|---|---|")
        for d, fn, obj in t["rows"]:
            if d < 1:
                break
            L.append("| %.0f | %.1f | `%s` | %s |" % (d, 100.0 * d / t["ir_per_msg"], fn.replace("|", "\\|")[:140],
                                                    obj))
        L.append("")

    micro = [r for r in records if r.get("kind") == "micro"]
    if micro:
        L.append("## Micro-benchmarks (criterion, `cargo bench --manifest-path bench/Cargo.toml --bench micro`)\n")
        L.append("| benchmark | median time | throughput |")
        L.append("|---|---|---|")
        for r in micro:
            t = r["ns"]
            ts = "%.3g ns" % t if t < 1e3 else ("%.3g µs" % (t / 1e3) if t < 1e6 else "%.3g ms" % (t / 1e6))
            tp = ("%.2f GiB/s" % r["gib_per_s"]) if "gib_per_s" in r else (
                ("%.0f M/s" % r["m_per_s"]) if "m_per_s" in r else "")
            L.append("| %s | %s | %s |" % (r["id"], ts, tp))
        L.append("")

    L.append("## How each client works\n")
    L.append("- **libpjwebsock** (`bench/clients/pj_client.c`): NULL pool/ioqueue/timer heap, so the library's "
             "own epoll thread runs the callbacks; echoes are verified in `on_rx_msg`; pingpong sends the next "
             "message from `on_rx_msg`; stream/bulk send from the main thread with `pj_websock_send()` as fast as "
             "it accepts, with the send-queue high-water mark at 256 KiB as the header recommends for such senders "
             "(on `PJ_EBUSY` it waits with `pj_websock_wait_buffered()` until half of that is left, then retries); fanout sends from the main thread at each "
             "frame's due time (20 ms per connection, offsets on a 1 ms grid — the same schedule in every client).")
    if PJP in clients:
        L.append("- **libpjwebsock-poll**: the same program with `PJWS_LOOP=poll`: "
                 "`pj_websock_set_loop_mode(PJ_WEBSOCK_LOOP_POLL)`, so no library thread runs; the main thread "
                 "runs the loop in `pj_websock_poll()` whenever it waits (connects, echoes, room after "
                 "`PJ_EBUSY` inside `pj_websock_wait_buffered()`, and the next fanout frame's due time with `pj_websock_poll_us()`, to the microsecond) and, "
                 "while streaming, `pj_websock_poll(0)` after every 128 KiB sent; callbacks run on the main "
                 "thread.")
    L.append("- **tokio-tungstenite** (`bench/clients/tungstenite`): current-thread runtime, "
             "`connect_async_tls_with_config(..., disable_nagle = true, ...)`; stream/bulk split the socket and "
             "`feed()` every message then `flush()` once (tungstenite writes whenever its 128 KiB write buffer "
             "fills) while the reader verifies; pingpong and fanout `send()` (feed + flush); fanout uses "
             "`interval` + `select!` per connection.")
    L.append("- **libwebsockets** (`bench/clients/lws_client.c`): one context serviced by the main thread, "
             "one `lws_write()` per `CLIENT_WRITEABLE` callback, messages above the 64 KiB packet size sent as "
             "fragments, `lws_sul` timers for fanout; 64 KiB rx buffer and 128 KiB service buffer for "
             "stream/bulk, defaults otherwise.")
    if "boost-beast" in clients:
        L.append("- **Boost.Beast** (`bench/clients/beast_client.cpp`): one `io_context` on the main thread, "
                 "`websocket::stream<tcp_stream>` with `async_write` / `async_read` into a `flat_buffer`, "
                 "one write in flight at a time (Beast's rule), TCP_NODELAY set on the socket.")
    if FLOOR in clients:
        L.append("- **raw-sockets** (`bench/clients/raw_client.c`, ws:// stream, bulk and fanout; a reference, "
                 "not a peer): no WebSocket library; one thread, a hand-written upgrade, each frame built and "
                 "masked in place (a fresh key each, 16 bytes at a time). Fanout: one epoll set, one `send()` per "
                 "frame, one `recv()` per readiness. Stream and bulk: frames batched into one 128 KiB send buffer "
                 "(a larger frame alone), one `send()` per turn, 64 KiB `recv()`s until one comes up short, "
                 "`poll()` only when neither moved; echoes checked like every client's.")
    L.append("- **Echo server** (`bench/server`): tokio current-thread, frame-level echo (each frame's "
             "payload unmasked straight into the output, whole reads answered by one write), TCP_NODELAY, "
             "backlog 8192, pinned to its own core; checks mask bit, RSV, opcodes, control frames and "
             "fragmentation and logs violations, which fail the run; wss:// through OpenSSL with Mozilla's "
             "intermediate v5 settings (TLS 1.2 and 1.3, the client's cipher choice: libpjwebsock "
             "negotiates TLS_AES_128_GCM_SHA256, the peers TLS_AES_256_GCM_SHA384). A write blocked for "
             "10 ms makes it read what waits unread and echo it afterwards (see bench/README.md; only "
             "Boost.Beast's stream workload gets there).")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


# ---- main ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny runs, once each; exit 1 on any failure")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workloads", help="comma-separated subset of: " + ",".join(w["name"] for w in WORKLOADS))
    ap.add_argument("--clients", help="comma-separated subset of: " + ",".join(CLIENT_ORDER))
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client to separate CPUs")
    ap.add_argument("--report", metavar="JSONL", help="only regenerate RESULTS.md from a results file")
    ap.add_argument("--results-md", default=os.path.join(BENCH, "RESULTS.md"))
    ap.add_argument("--cc", metavar="NAME", help="TCP congestion control for the run, e.g. cubic or bbr "
                    "(sets net.ipv4.tcp_congestion_control, root only, and restores it at the end)")
    a = ap.parse_args()

    if a.report:
        records = [json.loads(l) for l in open(a.report) if l.strip()]
        info = next((r for r in records if r.get("kind") == "info"), {})
        # Per-function tables are derived from the callgrind profiles: redo
        # them when the profiles are still in bench/build/callgrind.
        for r in [r for r in records if r.get("kind") == "callgrind" and r.get("client") == PJ and r.get("ok")]:
            top = make_top(r)
            if top:
                records = [x for x in records if not (x.get("kind") == "callgrind_top" and x["name"] == r["name"])]
                records.append(top)
        write_report(records, info, a.results_md, a.report, info.get("argv", ["make", "bench"]))
        log("wrote " + a.results_md)
        return 0

    # SIGTERM unwinds like Ctrl-C, so a --cc setting is restored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with CongestionControl(a.cc) as cc:
        return run(a, cc.before)


def run(a, cc_default):
    """The runs (or --smoke), under the congestion control chosen;
    `cc_default` is the system's setting."""
    profile = "smoke" if a.smoke else "release"
    bins = client_bins(profile)
    clients = [c for c in CLIENT_ORDER if os.path.exists(bins[c])]
    if a.clients:
        want = a.clients.split(",")
        clients = [c for c in clients if c in want]
    missing = [c for c in CLIENT_ORDER[:3] if c not in clients and (not a.clients or c in a.clients.split(","))]
    workloads = WORKLOADS
    if a.workloads:
        want = a.workloads.split(",")
        workloads = [w for w in WORKLOADS if w["name"] in want]
    reps = 1 if a.smoke else a.reps

    cpus = sorted(os.sched_getaffinity(0))
    srv_cpu, cli_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 and shutil.which("taskset") and not a.no_pin else (None, None)
    info = machine_info()
    info["cc_default"] = cc_default or info["tcp_cc"]
    info["pinning"] = ("server on CPU %d, client on CPU %d (taskset)" % (srv_cpu, cli_cpu)
                       if srv_cpu is not None else "none")
    extra = sys.argv[1:]
    info["argv"] = (["make", "bench"] + (["BENCH_ARGS='%s'" % " ".join(extra)] if extra else [])
                    if os.environ.get("PJWS_BENCH_VIA_MAKE") else ["python3", "bench/run.py"] + extra)
    info["kind"] = "info"

    outdir = os.path.join(BUILD, "smoke") if a.smoke else RESULTS
    os.makedirs(outdir, exist_ok=True)
    os.makedirs(BUILD, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    jsonl = os.path.join(outdir, ("smoke-%s.jsonl" if a.smoke else "%s.jsonl") % stamp)
    records = [info]
    out = open(jsonl, "w")
    out.write(json.dumps(info) + "\n")

    def emit(rec):
        records.append(rec)
        out.write(json.dumps(rec) + "\n")
        out.flush()

    failures = []
    for c in missing:
        failures.append("%s: client binary missing (%s)" % (c, bins[c]))
        log("! %s client not built (%s)" % (c, bins[c]))

    cert = make_cert(os.path.join(BUILD, "tls"))
    log("machine: %s CPUs, %s; pinning: %s" % (info["nproc"], info["cpu_model"], info["pinning"]))
    log("clients: %s; results: %s" % (", ".join(clients), os.path.relpath(jsonl, ROOT)))
    t_start = time.monotonic()
    sbin = server_bin(profile)
    servers = {False: Server(sbin, srv_cpu)}
    if any(w.get("tls") for w in workloads):
        if cert:
            servers[True] = Server(sbin, srv_cpu, tls=cert)
        else:
            log("! no openssl: wss workloads skipped")
            workloads = [w for w in workloads if not w.get("tls")]
    try:
        for s in servers.values():
            s.start()
        timeout = 90 if a.smoke else 180
        for rep in range(reps):
            order = clients[rep % len(clients):] + clients[:rep % len(clients)] if clients else []
            for wl in workloads:
                args = merge_args(wl["args"], wl["smoke"]) if a.smoke else wl["args"]
                for c in order:
                    if not runs_workload(c, wl["name"]):
                        continue
                    srv = servers[bool(wl.get("tls"))]
                    srv.ensure()
                    rec = run_client(c, bins[c], wl, args, srv, cli_cpu, timeout, cert, rep)
                    emit(rec)
                    if rec.get("ok"):
                        keys = [m[0] for m in wl["metrics"]]
                        shown = with_server_cpu(rec)
                        status = "ok  " + "  ".join("%s=%s" % (k, fmt(shown[k])) for k in keys if k in shown)
                        if rec.get("server_saturated"):
                            status += "  (server saturated)"
                    else:
                        status = "FAILED: " + rec.get("error", "?")
                        failures.append("%s / %s: %s" % (wl["name"], c, rec.get("error", "?")))
                    log("[%d/%d] %-15s %-18s %s" % (rep + 1, reps, wl["name"], c, status))
                    time.sleep(1.0 if "conns" in wl["name"] and not a.smoke else 0.2)

        if not a.no_callgrind and shutil.which("valgrind"):
            cg_dir = os.path.join(BUILD, "callgrind")
            os.makedirs(cg_dir, exist_ok=True)
            cg_clients = [PJ] if a.smoke else clients
            for cg in CALLGRIND:
                if a.workloads and cg["name"] not in a.workloads.split(","):
                    continue
                n1, n2 = cg["smoke_n"] if a.smoke else cg["n"]
                for c in cg_clients:
                    if c not in clients or not runs_workload(c, cg["name"]):
                        continue
                    servers[False].ensure()
                    rec = run_callgrind(c, bins[c], cg, n1, n2, servers[False], cli_cpu, cg_dir,
                                        300 if a.smoke else 1800)
                    emit(rec)
                    if rec["ok"]:
                        log("callgrind %-9s %-18s %.0f Ir/msg" % (cg["name"], c, rec["ir_per_msg"]))
                    else:
                        log("callgrind %-9s %-18s FAILED: %s" % (cg["name"], c, rec["error"]))
                        failures.append("callgrind %s / %s: %s" % (cg["name"], c, rec["error"]))
                    if c == PJ and rec["ok"] and not a.smoke:
                        top = make_top(rec)
                        if top:
                            emit(top)
        elif not a.no_callgrind:
            log("! valgrind not installed: no instruction counts")

        if a.smoke:
            # Self-test of the verification: against a server that corrupts
            # one byte of every 7th frame, every client must fail.
            bad = Server(sbin, srv_cpu, extra=["--corrupt", "7"])
            bad.start()
            try:
                for c in clients:
                    checked = CLIENT_WORKLOADS.get(c, ("stream", "bulk-60KiB"))
                    for wl in [w for w in WORKLOADS if w["name"] in checked]:
                        args = merge_args(wl["args"], wl["smoke"])
                        if wl["name"] == "bulk-1MiB":
                            args = merge_args(args, ["--n", "8"])  # the 7th frame is corrupted
                        rec = run_client(c, bins[c], wl, args, bad, cli_cpu, 60, cert, 0)
                        caught = not rec.get("ok") and "echo" in rec.get("error", "")
                        emit(dict(kind="selftest", client=c, name=wl["name"], ok=caught,
                                  error=rec.get("error", "") if caught else "corrupted echo NOT detected: " +
                                  json.dumps(rec)[:300]))
                        log("self-test %-15s %-18s %s" % (wl["name"], c, "corruption detected" if caught else
                                                          "FAILED: corruption not detected"))
                        if not caught:
                            failures.append("self-test %s / %s: corrupted echo not detected" % (wl["name"], c))
            finally:
                bad.stop()
            servers[False].ensure()
            err = server_drain_selftest(servers[False].port)
            emit(dict(kind="selftest", client="echo-server", name="drain", ok=err is None, error=err or ""))
            log("self-test %-15s %-18s %s" % ("drain", "echo-server", "200 MiB taken unread, every echo checked"
                                              if err is None else "FAILED: " + err))
            if err is not None:
                failures.append("self-test drain / echo-server: " + err)
    finally:
        for s in servers.values():
            s.stop()

    if not a.no_micro and (not a.workloads):
        log("criterion micro-benchmarks%s ..." % (" (--test: each once)" if a.smoke else ""))
        for rec in run_micro(a.smoke, cli_cpu, 600 if a.smoke else 1800):
            emit(rec)
            if rec["kind"] == "micro_run":
                log("micro: %s (%.0f s)" % ("ok" if rec["ok"] else "FAILED", rec["wall_s"]))
                if not rec["ok"]:
                    failures.append("micro-benchmarks: " + rec.get("error", "")[-300:])
    out.close()
    elapsed = time.monotonic() - t_start
    if not a.smoke:
        write_report(records, info, a.results_md, jsonl, info["argv"])
        # Print the tables (everything up to the micro-benchmarks) as well.
        text = open(a.results_md).read()
        start = text.find("## Workloads")
        end = text.find("## Where libpjwebsock")
        log("\n" + text[start:end if end > 0 else None].rstrip())
        log("\nwrote %s and %s" % (os.path.relpath(a.results_md, ROOT), os.path.relpath(jsonl, ROOT)))
    log("runs took %.0f s" % elapsed)
    if failures:
        log("\n%d FAILURE(S):" % len(failures))
        for f in failures:
            log("  " + f)
        return 1
    log("all clients verified every echo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
