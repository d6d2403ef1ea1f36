#!/usr/bin/env python3
"""Registration benchmark: digest REGISTERs per second, Kamailio vs the PBX.

A hand-run benchmark, not a test.  Standard library only.

For each system under test (Kamailio, the yardstick, always unless
--skip-kamailio; the PBX when --pbx-config is given) it

  1. starts the server on a free UDP port of 127.0.0.1, with N users
     100000..100000+N-1 whose password is "pw" + number;
  2. for each target rate, runs K SIPp processes in parallel (distinct local
     ports, each with its own slice of the users) playing
     register/register_load.xml: REGISTER -> 401 -> REGISTER with MD5
     credentials -> 200;
  3. reads SuccessfulCall(C) / FailedCall(C) / Retransmissions(C) and the
     start/end times from the SIPp -trace_stat files and computes the
     registrations per second actually achieved;
  4. stops the server.

At the end it prints markdown table rows for BENCHMARKS.md, and for the PBX
the ratio PBX / Kamailio.

Kamailio uses kamailio/kamailio.cfg beside this script (in-memory usrloc,
passwords derived from the user name, so no user list is needed).

The PBX is started as `twistd -n pbx --config GENERATED.yml` with the twistd
of the virtualenv running this script.  GENERATED.yml is the --pbx-config
file with server.sip_host = 127.0.0.1, server.sip_port = the chosen port,
database.path = a fresh file in the work directory, and `extensions`
replaced by the N benchmark users ({number, name, password}).  The digest
realm and everything else come from the base file.

Examples:

    python3 bench/register_bench.py --rates 1000,2000,3000 --duration 10
    .venv/bin/python bench/register_bench.py --pbx-config config.yml \\
        --rates 500,1000,2000 --duration 10

Only 127.0.0.1 is ever used; every SIPp run is bounded by -m and -timeout.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "register"))

from make_users import (FIRST_USER, password_for, user_range,  # noqa: E402
                        write_users_csv)

LOAD_SCENARIO = os.path.join(HERE, "register", "register_load.xml")
KAMAILIO_CFG = os.path.join(HERE, "kamailio", "kamailio.cfg")
HOST = "127.0.0.1"

SIPP_EXIT_CODES = {
    0: "all calls succeeded",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- helpers

def free_udp_port(taken):
    """A port of HOST free now for UDP and TCP, not in `taken` (a set).

    TCP too because the PBX also listens for SIP over TCP on its port.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port in taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((HOST, port))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError("no free port found")


def split_evenly(total, parts):
    """Split the integer `total` into `parts` integers that add up to it."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def tail(path, lines=15):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no %s)" % path


def cpu_jiffies():
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]          # idle + iowait
    return sum(values) - idle, sum(values)


def machine_busy(interval=1.0):
    """Fraction (0..1) of all CPUs busy during `interval` seconds."""
    try:
        busy0, total0 = cpu_jiffies()
        time.sleep(interval)
        busy1, total1 = cpu_jiffies()
    except OSError:
        return 0.0
    total = total1 - total0
    return (busy1 - busy0) / float(total) if total else 0.0


def wait_idle(max_busy, patience):
    """Wait up to `patience` s for the machine to be at most `max_busy`
    busy (other jobs would steal CPU from the run); return the last
    measure."""
    deadline = time.monotonic() + patience
    busy = machine_busy()
    while busy > max_busy and time.monotonic() < deadline:
        log("   . machine %.0f%% busy, waiting for it to be idle" % (busy * 100))
        time.sleep(4)
        busy = machine_busy()
    return busy


def process_tree_cpu(pid):
    """CPU seconds (user + system) used so far by pid and its descendants.

    Live descendants are counted from their own times; those that exited
    and were waited for are in pid's cutime/cstime (which is how the SIPp
    processes of this script are counted when pid is this script).
    """
    tick = float(os.sysconf("SC_CLK_TCK"))
    stats = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid ... utime stime cutime cstime
        stats[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                            int(fields[13]) + int(fields[14]))
    tree, grew = {pid}, True
    while grew:
        grew = False
        for p, (ppid, _, _) in stats.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                grew = True
    total = sum(stats[p][1] for p in tree if p in stats)
    total += stats.get(pid, (0, 0, 0))[2]
    return total / tick


class ForeignCpu:
    """CPU used by processes that are not this script's own (not the
    server, not SIPp) between start() and stop(), as a fraction of all
    the CPUs: another job on the machine makes the figures meaningless."""

    def start(self):
        self.t0 = time.monotonic()
        self.busy0, _ = cpu_jiffies()
        self.mine0 = process_tree_cpu(os.getpid())

    def stop(self):
        busy1, _ = cpu_jiffies()
        mine = process_tree_cpu(os.getpid()) - self.mine0
        wall = time.monotonic() - self.t0
        busy = (busy1 - self.busy0) / float(os.sysconf("SC_CLK_TCK"))
        cpus = os.cpu_count() or 1
        return max(0.0, busy - mine) / (wall * cpus) if wall else 0.0


def sip_probe(port, timeout=0.5):
    """Send one REGISTER without credentials; True if any SIP reply comes.

    Every registrar under test must answer it (with 401), so it is used to
    wait until a freshly started server is ready.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        lport = s.getsockname()[1]
        s.settimeout(timeout)
        stamp = "%d-%d" % (os.getpid(), time.monotonic_ns())
        msg = (
            "REGISTER sip:{h}:{p} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP {h}:{lp};branch=z9hG4bK-probe-{s};rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:{u}@{h}>;tag=probe-{s}\r\n"
            "To: <sip:{u}@{h}>\r\n"
            "Call-ID: probe-{s}@{h}\r\n"
            "CSeq: 1 REGISTER\r\n"
            "Contact: <sip:{u}@{h}:{lp}>\r\n"
            "Expires: 60\r\n"
            "Content-Length: 0\r\n\r\n"
        ).format(h=HOST, p=port, lp=lport, s=stamp, u=FIRST_USER)
        try:
            s.sendto(msg.encode("ascii"), (HOST, port))
            data, _ = s.recvfrom(65535)
        except OSError:   # timeout, or ICMP port unreachable
            return False
        return data.startswith(b"SIP/2.0 ")


def wait_ready(proc, port, timeout, logpath):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with code %s; log %s:\n%s"
                               % (proc.returncode, logpath, tail(logpath)))
        if sip_probe(port):
            return
        time.sleep(0.2)
    raise RuntimeError("server did not answer a REGISTER on %s:%d within "
                       "%ss; log %s:\n%s"
                       % (HOST, port, timeout, logpath, tail(logpath)))


def stop_process(proc, timeout=15):
    """SIGTERM the process we started, SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- servers

class Kamailio:
    name = "Kamailio"

    def __init__(self, args, workdir):
        self.args = args
        self.dir = os.path.join(workdir, "kamailio")
        os.makedirs(self.dir)
        self.logpath = os.path.join(self.dir, "kamailio.log")
        self.proc = None

    def start(self, port, users):
        # users need no configuration: kamailio.cfg derives the passwords.
        # A fresh run directory means no stale pid file can stop the start.
        a = self.args
        cmd = [a.kamailio, "-f", KAMAILIO_CFG,
               "-A", "SIP_ADDR=" + HOST,
               "-A", "SIP_PORT=%d" % port,
               "-A", "CHILDREN=%d" % a.kamailio_children,
               "-m", str(a.kamailio_shm), "-M", str(a.kamailio_pkg),
               "-DD", "-E",
               "-P", os.path.join(self.dir, "kamailio.pid"),
               "-Y", self.dir, "-w", self.dir]
        log("+ " + " ".join(cmd))
        with open(self.logpath, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
        wait_ready(self.proc, port, a.start_timeout, self.logpath)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)


class Pbx:
    name = "PBX"

    def __init__(self, args, workdir):
        self.args = args
        self.dir = os.path.join(workdir, "pbx")
        os.makedirs(self.dir)
        self.logpath = os.path.join(self.dir, "twistd.log")
        self.config = os.path.join(self.dir, "config.yml")
        self.proc = None

    def start(self, port, users):
        a = self.args
        write_pbx_config(a.pbx_config, self.config, users, port,
                         os.path.join(self.dir, "bench.db"))
        cmd = [a.twistd, "-n",
               "--pidfile", os.path.join(self.dir, "twistd.pid"),
               "--logfile", self.logpath,
               "pbx", "--config", self.config]
        log("+ " + " ".join(cmd))
        with open(os.path.join(self.dir, "twistd.out"), "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
        wait_ready(self.proc, port, a.start_timeout, self.logpath)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)


# ------------------------------------------------------- PBX configuration

def bench_extensions(users):
    return [{"number": str(u), "name": "Bench %d" % u,
             "password": password_for(u)} for u in users]


def write_pbx_config(base_path, out_path, users, port, db_path):
    """Copy the base YAML config with the benchmark's settings:

      server.sip_host = 127.0.0.1     (the benchmark stays on loopback)
      server.sip_port = port
      database.path   = db_path       (a fresh database in the work dir,
                                       never the base config's one)
      extensions      = the N benchmark users, {number, name, password}

    With PyYAML importable (it is in the PBX's virtualenv) the file is
    loaded and dumped again; without it a line-based edit is done, which
    handles block-style YAML (the usual hand-written kind).
    """
    with open(base_path, "r", encoding="utf-8") as f:
        text = f.read()
    # Voicemail off: a mailbox owner's REGISTER is followed by a message-waiting
    # NOTIFY, which the SIPp scenario does not expect (and Kamailio does not send).
    settings = [("server", "sip_host", HOST), ("server", "sip_port", port),
                ("database", "path", db_path), ("voicemail", "enabled", False)]
    extensions = bench_extensions(users)
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise SystemExit("%s: top level is not a mapping" % base_path)
        for section, key, value in settings:
            block = data.get(section) or {}
            block[key] = value
            data[section] = block
        data["extensions"] = extensions
        out = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    else:
        out = merge_yaml_text(text, settings, extensions)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(out)


def _top_key(line):
    """("key", "rest") for a "key: rest" line at column 0, else (None, None).

    Comments and "- item" lines (a list may sit at column 0 under its key)
    are not keys.
    """
    m = re.match(r"([A-Za-z_][\w-]*)\s*:(.*)$", line)
    return (m.group(1), m.group(2).strip()) if m else (None, None)


def merge_yaml_text(text, settings, extensions):
    """Line-based fallback of write_pbx_config, for block-style YAML."""
    # 1. drop any top-level "extensions:" block
    lines, skipping = [], False
    for line in text.splitlines():
        key, _ = _top_key(line)
        if key is not None:
            skipping = key == "extensions"
        if not skipping:
            lines.append(line)

    # 2. set each section.key, replacing the line if there is one
    for section, key, value in settings:
        rendered = json.dumps(value)    # a JSON scalar is a YAML scalar
        at = None
        for i, line in enumerate(lines):
            name, rest = _top_key(line)
            if name == section:
                if rest and not rest.startswith("#"):
                    raise SystemExit("%s: is written inline in the base "
                                     "config; install PyYAML or use block "
                                     "style" % section)
                at = i
                break
        if at is None:
            lines += ["%s:" % section, "  %s: %s" % (key, rendered)]
            continue
        end = at + 1
        while end < len(lines) and (not lines[end].strip()
                                    or lines[end][0] in " \t#"):
            end += 1
        block = [ln for ln in lines[at + 1:end]
                 if not re.match(r"\s+%s\s*:" % re.escape(key), ln)]
        indent = "  "
        for ln in block:
            if ln.strip() and not ln.lstrip().startswith("#"):
                indent = ln[:len(ln) - len(ln.lstrip())]
                break
        lines[at + 1:end] = ["%s%s: %s" % (indent, key, rendered)] + block

    # 3. append the benchmark extensions
    lines.append("extensions:")
    for ext in extensions:
        lines.append("  - number: %s" % json.dumps(ext["number"]))
        lines.append("    name: %s" % json.dumps(ext["name"]))
        lines.append("    password: %s" % json.dumps(ext["password"]))
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- SIPp

def read_sipp_stats(path):
    """Last row of a SIPp -trace_stat file, as {column: value}."""
    with open(path, "r", errors="replace") as f:
        rows = [ln.rstrip("\n") for ln in f if ln.strip()]
    if len(rows) < 2:
        raise RuntimeError("%s has no data row" % path)
    header = rows[0].rstrip(";").split(";")
    last = rows[-1].rstrip(";").split(";")
    return dict(zip(header, last))


def stat_time(cell):
    """'2024-01-01<TAB>12:00:00.000000<TAB>1704110400.000000' -> epoch."""
    return float(cell.split("\t")[-1])


def run_load(args, server_port, rate, calls, slices, rundir, ports,
             scenario=LOAD_SCENARIO, extra=None,
             default_behaviors="all,-bye", hold=0.0):
    """K parallel SIPp processes; returns a dict of totals.

    scenario, extra (more sipp arguments), default_behaviors and hold (the
    seconds a call lasts beyond its messages, added to the time limit) let
    other benchmarks (call_bench.py) reuse it; the defaults are the
    registration benchmark's.
    """
    procs = len(slices)
    os.makedirs(rundir)
    rates = split_evenly(rate, procs)
    counts = split_evenly(calls, procs)
    # bound every run in time: the expected length plus a margin
    limit = (int(math.ceil(calls / float(rate) + hold))
             + args.sipp_timeout_margin)
    running = []
    t0 = time.monotonic()
    for i in range(procs):
        if counts[i] == 0:
            continue
        stats = os.path.join(rundir, "sipp%d_stats.csv" % i)
        out = os.path.join(rundir, "sipp%d.out" % i)
        cmd = [args.sipp, "%s:%d" % (HOST, server_port),
               "-sf", scenario, "-inf", slices[i],
               "-i", HOST, "-p", str(free_udp_port(ports)),
               "-r", str(rates[i]), "-m", str(counts[i]),
               "-buff_size", "4194304",
               "-recv_timeout", str(args.recv_timeout_ms),
               "-max_non_invite_retrans", "3",
               "-default_behaviors", default_behaviors,
               "-timeout", "%ds" % limit, "-timeout_error",
               "-trace_stat", "-stf", stats, "-fd", "1",
               "-trace_err", "-nostdin"] + list(extra or ())
        if i == 0:
            log("+ " + " ".join(cmd) + "   (x%d)" % procs)
        with open(out, "wb") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=rundir)
        running.append((p, stats, out))

    total = {"success": 0, "failed": 0, "retrans": 0, "created": 0,
             "errors": []}
    starts, ends = [], []
    for p, stats, out in running:
        try:
            rc = p.wait(limit + 30)
        except subprocess.TimeoutExpired:
            stop_process(p, 5)
            rc = "killed"
        if rc not in (0, 1):
            total["errors"].append("sipp exit %s (%s), see %s"
                                   % (rc, SIPP_EXIT_CODES.get(rc, "?"), out))
        try:
            row = read_sipp_stats(stats)
        except (OSError, RuntimeError) as e:
            total["errors"].append(str(e))
            continue
        total["success"] += int(row["SuccessfulCall(C)"])
        total["failed"] += int(row["FailedCall(C)"])
        total["retrans"] += int(row["Retransmissions(C)"])
        total["created"] += int(row["TotalCallCreated"])
        starts.append(stat_time(row["StartTime"]))
        ends.append(stat_time(row["CurrentTime"]))
    total["wall"] = time.monotonic() - t0
    # SIPp's own clock: first call of the first process to the end of the
    # last one, without process start-up and shutdown.
    total["elapsed"] = (max(ends) - min(starts)) if starts else total["wall"]
    total["rate"] = total["success"] / total["elapsed"] if total["elapsed"] else 0.0
    total["procs"] = procs
    total["target"] = rate
    total["calls"] = calls
    return total


def make_slices(workdir, users, procs, order):
    """One users file per SIPp process, each with its own users."""
    users = list(users)
    paths = []
    sizes = split_evenly(len(users), procs)
    start = 0
    for i, size in enumerate(sizes):
        path = os.path.join(workdir, "users_%dof%d.csv" % (i + 1, procs))
        write_users_csv(path, users[start:start + size], order)
        start += size
        paths.append(path)
    return paths


# -------------------------------------------------------------------- main

def cpu_ms(res):
    """Server CPU milliseconds per successful registration."""
    return 1000.0 * res["server_cpu"] / res["success"] if res["success"] else 0.0


def describe(res):
    s = "%.0f/s" % res["rate"]
    if res["failed"] or res["errors"]:
        s += " (%d failed)" % res["failed"]
    return s


def clean(res, args):
    """No failure, no error, and the target rate was actually reached."""
    return (not res["failed"] and not res["errors"]
            and res["success"] == res["calls"]
            and res["rate"] >= args.keep_up * res["target"])


def disturbed(res, args):
    """Other jobs used more than --max-busy of the CPUs during the run."""
    return res["foreign"] > args.max_busy


def machine_description():
    cores = os.cpu_count() or 0
    try:
        with open("/etc/os-release") as f:
            osr = dict(ln.rstrip("\n").split("=", 1) for ln in f if "=" in ln)
        os_name = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        os_name = platform.platform()
    return "%d cores, %s" % (cores, os_name)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--users", type=int, default=10000,
                   help="number of users N (default %(default)s)")
    p.add_argument("--rates", default="500,1000,2000",
                   help="comma-separated target rates in registrations/s "
                        "(default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of load per rate: calls = rate x duration "
                        "(default %(default)s)")
    p.add_argument("--calls", type=int, default=None,
                   help="registrations per rate (overrides --duration)")
    p.add_argument("--procs", type=int, default=None,
                   help="SIPp processes in parallel (default: one per "
                        "--rate-per-sipp registrations/s)")
    p.add_argument("--rate-per-sipp", type=int, default=1000,
                   help="registrations/s given to one SIPp process when "
                        "--procs is not set (default %(default)s; one SIPp "
                        "saturates at about 1000-1250 calls/s)")
    p.add_argument("--order", choices=("SEQUENTIAL", "RANDOM"),
                   default="SEQUENTIAL", help="users file order")
    p.add_argument("--settle", type=float, default=3.0,
                   help="pause between two rates, s (default %(default)s)")
    p.add_argument("--keep-up", type=float, default=0.95,
                   help="a run counts as clean if it has no failure and "
                        "reaches this fraction of its target rate "
                        "(default %(default)s)")
    p.add_argument("--max-busy", type=float, default=0.10,
                   help="a run is disturbed (and not counted) when other "
                        "processes use more than this fraction of the CPUs "
                        "during it; also the idleness awaited by "
                        "--wait-idle (default %(default)s)")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each run, wait up to this many seconds for "
                        "the machine to be idle (default: do not wait)")
    p.add_argument("--recv-timeout-ms", type=int, default=5000,
                   help="SIPp -recv_timeout (default %(default)s)")
    p.add_argument("--sipp-timeout-margin", type=int, default=30,
                   help="seconds added to the expected run length for "
                        "SIPp's -timeout (default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=30.0,
                   help="seconds to wait for a server to answer "
                        "(default %(default)s)")
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    p.add_argument("--skip-kamailio", action="store_true",
                   help="do not measure Kamailio")
    p.add_argument("--kamailio", default=shutil.which("kamailio")
                   or "/usr/sbin/kamailio")
    p.add_argument("--kamailio-children", type=int, default=4,
                   help="Kamailio UDP workers (default %(default)s)")
    p.add_argument("--kamailio-shm", type=int, default=1024,
                   help="Kamailio shared memory, MB (default %(default)s)")
    p.add_argument("--kamailio-pkg", type=int, default=64,
                   help="Kamailio private memory per process, MB "
                        "(default %(default)s)")
    p.add_argument("--pbx-config", default=None,
                   help="base config.yml of the PBX: measure the PBX too")
    p.add_argument("--twistd",
                   default=os.path.join(os.path.dirname(sys.executable),
                                        "twistd"),
                   help="twistd to start the PBX with (default: the one "
                        "beside this Python, %(default)s)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (logs, stats, users)")
    args = p.parse_args(argv)
    try:
        args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error("--rates must be integers separated by commas")
    if not args.rates or min(args.rates) < 1:
        p.error("--rates must be positive")
    if args.users < 1:
        p.error("--users must be at least 1")
    if args.skip_kamailio and not args.pbx_config:
        p.error("nothing to measure: --skip-kamailio without --pbx-config")
    for tool, flag in ((args.sipp, "--sipp"),
                       (None if args.skip_kamailio else args.kamailio,
                        "--kamailio"),
                       (args.twistd if args.pbx_config else None, "--twistd")):
        if tool and not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            p.error("%s: %s is not an executable" % (flag, tool))
    if args.pbx_config and not os.path.isfile(args.pbx_config):
        p.error("--pbx-config: no file %s" % args.pbx_config)
    return args


def main(argv=None):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="register-bench-")
    log("work directory: %s" % workdir)
    users = user_range(args.users)
    ports = set()

    systems = []
    if not args.skip_kamailio:
        systems.append(Kamailio(args, workdir))
    if args.pbx_config:
        systems.append(Pbx(args, workdir))

    results = {}   # system name -> {rate: result}
    slices = {}    # procs -> users files
    try:
        for system in systems:
            results[system.name] = {}
            port = free_udp_port(ports)
            log("== %s on %s:%d, %d users" % (system.name, HOST, port,
                                              args.users))
            system.start(port, users)
            try:
                for rate in args.rates:
                    calls = args.calls or int(round(rate * args.duration))
                    procs = args.procs or max(
                        1, int(math.ceil(rate / float(args.rate_per_sipp))))
                    procs = min(procs, calls, args.users)
                    if procs not in slices:
                        slices[procs] = make_slices(workdir, users, procs,
                                                    args.order)
                    rundir = os.path.join(system.dir, "rate%d" % rate)
                    busy = wait_idle(args.max_busy, args.wait_idle)
                    if busy > args.max_busy:
                        log("   ! the machine is %.0f%% busy before this run:"
                            " figures will be low" % (busy * 100))
                    cpu0 = process_tree_cpu(system.proc.pid)
                    foreign = ForeignCpu()
                    foreign.start()
                    res = run_load(args, port, rate, calls, slices[procs],
                                   rundir, ports)
                    res["foreign"] = foreign.stop()
                    res["server_cpu"] = process_tree_cpu(system.proc.pid) - cpu0
                    res["busy_before"] = busy
                    results[system.name][rate] = res
                    log("   target %6d/s  %2d sipp  ok %7d  failed %5d  "
                        "retrans %6d  %.2fs  => %.0f registrations/s, "
                        "server CPU %.3f ms/registration%s"
                        % (rate, procs, res["success"], res["failed"],
                           res["retrans"], res["elapsed"], res["rate"],
                           cpu_ms(res),
                           "" if clean(res, args) else "  (NOT clean)"))
                    if disturbed(res, args):
                        log("   ! other processes used %.0f%% of the CPUs "
                            "during this run: not counted"
                            % (res["foreign"] * 100))
                    for err in res["errors"]:
                        log("   ! " + err)
                    time.sleep(args.settle)
            finally:
                system.stop()
    finally:
        if args.keep:
            log("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report(args, results)
    return 0


def report(args, results):
    kam = results.get("Kamailio", {})
    pbx = results.get("PBX", {})
    today = datetime.date.today().isoformat()
    machine = machine_description()

    def cell(res):
        if res is None:
            return "to be measured"
        if disturbed(res, args):
            return describe(res) + " (disturbed)"
        return describe(res) + ("" if clean(res, args) else " *")

    print()
    print("| date | machine | users | target reg/s | SIPp procs "
          "| Kamailio reg/s | PBX reg/s | PBX / Kamailio "
          "| server CPU ms/reg (Kamailio / PBX) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in args.rates:
        k, x = kam.get(rate), pbx.get(rate)
        ref = k or x
        ratio = ("%.2f" % (x["rate"] / k["rate"])
                 if k and x and k["rate"] else "-")
        cpu = " / ".join("%.3f" % cpu_ms(r) if r else "-" for r in (k, x))
        print("| %s | %s | %d | %d | %d | %s | %s | %s | %s |"
              % (today, machine, args.users, rate, ref["procs"],
                 cell(k), cell(x), ratio, cpu))

    def best(res_by_rate):
        ok = [r for r in res_by_rate.values()
              if clean(r, args) and not disturbed(r, args)]
        return max(ok, key=lambda r: r["rate"]) if ok else None

    bk, bx = best(kam), best(pbx)
    print()
    print("Highest clean rate (0 failures, >= %d%% of target, "
          "not disturbed):" % round(args.keep_up * 100))
    print("| date | machine | users | Kamailio max reg/s | PBX max reg/s "
          "| PBX / Kamailio |")
    print("|---|---|---|---|---|---|")
    print("| %s | %s | %d | %s | %s | %s |"
          % (today, machine, args.users,
             "%.0f (target %d)" % (bk["rate"], bk["target"]) if bk
             else ("none clean" if kam else "not run"),
             "%.0f (target %d)" % (bx["rate"], bx["target"]) if bx
             else ("none clean" if pbx else "to be measured"),
             "%.2f" % (bx["rate"] / bk["rate"]) if bk and bx else "-"))
    print()
    print("* = not clean: failures, or the target rate was not reached.  "
          "(disturbed) = other processes used more than %d%% of the CPUs "
          "during the run." % round(args.max_busy * 100))


if __name__ == "__main__":
    sys.exit(main())
