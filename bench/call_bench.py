#!/usr/bin/env python3
"""Call benchmark: authenticated calls per second through the PBX, sippy and Kamailio.

A hand-run benchmark, not a test.  Run it with the PBX's virtualenv python
(its twistd starts the PBX; PyYAML writes the PBX's configuration).

One call, with SIPp on both sides, over UDP on 127.0.0.1:

    UAC (K SIPp processes, tests/peers/scenarios/uac_load.xml)
        INVITE -> 407 -> ACK -> INVITE with MD5 Proxy-Authorization
        -> 200 -> ACK -> hold (-d, 1 s) -> BYE -> 200
    server under test
    UAS (one SIPp process, tests/peers/scenarios/uas_load.xml: 100, 200, no 180)

For each system and each target rate (a fresh server per rate, so that the
memory figures start from an idle process):

  PBX       twistd -n pbx --config GENERATED.yml: callers 100000..  (password
            "pw" + number) and the callee extension 2000 (pw2000); RTP range
            30000-39999; features.rtp_timeout 0 (SIPp sends no RTP).  The UAS
            first registers as 2000 from its port (register.xml -m 1).  Every
            call crosses the B2BUA (two dialogs) and gets a relay session (4 UDP
            sockets).  RSS (VmRSS) is read before the load and sampled during
            it: KB per established call = (peak - idle) / (rate x hold).
  sippy     sippy's b2bua (PyPI `sippy`, installed in its own virtualenv in
            the work directory unless --sippy-b2bua is given):
                b2bua -f -l 127.0.0.1 -p PORT -s 127.0.0.1:UAS_PORT -u -A 0
            with SIPLOG_BEND=none (no log line per message; the PBX does not
            log per message either).  It does no digest authentication, so the
            UAC plays call/uac_load_noauth.xml (no 407 step).  No RTP proxy.
  Kamailio  kamailio/proxy.cfg: stateful proxy, MD5 digest auth
            (pv_proxy_check, 407 then the check), record_route, t_relay to the
            UAS.  4 UDP workers.

The rate is SIPp's: successful calls / (end of the last call - start of
the first), from the -trace_stat files.  A run is clean when no call failed
and the rate reached --keep-up (95 %) of the target (note: SIPp's clock
includes the hold of the last calls, so at 60 s of load and 1 s of hold the
achieved rate is at most 60/61 of the target).

Examples:

    .venv/bin/python bench/call_bench.py --rates 300 --duration 60
    .venv/bin/python bench/call_bench.py --rates 300,400,500,600 \\
        --duration 20 --systems pbx,sippy,kamailio --stop-at-failure

Only 127.0.0.1 is used; every SIPp run is bounded by -m and -timeout.
"""

import argparse
import datetime
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import register_bench as rb  # noqa: E402
from benchpbx import (CALLEE, CALLEE_PASSWORD, DEFAULT_BASE_CONFIG,  # noqa: E402
                      ROOT, free_port_outside, PbxServer, RssSampler, load_average, rss_kb)

SCENARIOS = os.path.join(ROOT, "tests", "peers", "scenarios")
UAC_AUTH = os.path.join(SCENARIOS, "uac_load.xml")
UAC_NOAUTH = os.path.join(HERE, "call", "uac_load_noauth.xml")
UAS = os.path.join(SCENARIOS, "uas_load.xml")
REGISTER = os.path.join(SCENARIOS, "register.xml")
KAMAILIO_PROXY_CFG = os.path.join(HERE, "kamailio", "proxy.cfg")
HOST = rb.HOST
log = rb.log


# ---------------------------------------------------------------- helpers

def write_call_users(path, callers):
    """SIPp -inf file for uac_load.xml: caller;password;callee."""
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("SEQUENTIAL\n")
        for u in callers:
            f.write("%s;%s;%s\n" % (u, rb.password_for(u), CALLEE))


def make_call_slices(workdir, callers, procs):
    paths, start = [], 0
    callers = list(callers)
    for i, size in enumerate(rb.split_evenly(len(callers), procs)):
        path = os.path.join(workdir, "callers_%dof%d.csv" % (i + 1, procs))
        write_call_users(path, callers[start:start + size])
        start += size
        paths.append(path)
    return paths


def sipp_peak_concurrent(rundir):
    """Sum over the UAC processes of their highest CurrentCall (SIPp stats)."""
    total = 0
    for name in os.listdir(rundir):
        if not name.endswith("_stats.csv"):
            continue
        with open(os.path.join(rundir, name), errors="replace") as f:
            rows = [ln.rstrip("\n").rstrip(";").split(";") for ln in f
                    if ln.strip()]
        if len(rows) < 2:
            continue
        try:
            col = rows[0].index("CurrentCall")
        except ValueError:
            continue
        total += max(int(r[col]) for r in rows[1:] if len(r) > col
                     and r[col].isdigit())
    return total


def wait_udp_bound(port, timeout, proc=None):
    """Until some socket is bound to UDP `port` (/proc/net/udp)."""
    wanted = ":%04X" % port
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1].endswith(wanted):
                    return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


class Uas:
    """One SIPp UAS (uas_load.xml) on a fixed port, running until stopped."""

    def __init__(self, args, rundir, port, remote_port):
        self.args, self.rundir = args, rundir
        self.port, self.remote_port = port, remote_port
        self.proc = None
        self.stats = os.path.join(rundir, "uas_stats.csv")

    def register(self, remote_port):
        """register.xml -m 1 as extension 2000 from this UAS's port."""
        users = os.path.join(self.rundir, "callee.csv")
        with open(users, "w") as f:
            f.write("SEQUENTIAL\n%s;%s\n" % (CALLEE, CALLEE_PASSWORD))
        cmd = [self.args.sipp, "%s:%d" % (HOST, remote_port), "-sf", REGISTER,
               "-inf", users, "-i", HOST, "-p", str(self.port), "-m", "1",
               "-recv_timeout", "5000", "-max_non_invite_retrans", "3",
               "-timeout", "20s", "-timeout_error", "-nostdin",
               "-trace_err", "-error_file",
               os.path.join(self.rundir, "register_errors.log")]
        log("+ " + " ".join(cmd))
        res = subprocess.run(cmd, cwd=self.rundir, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=60)
        if res.returncode != 0:
            raise RuntimeError("REGISTER of %s failed (sipp exit %d):\n%s"
                               % (CALLEE, res.returncode,
                                  res.stdout.decode(errors="replace")[-2000:]))

    def start(self):
        cmd = [self.args.sipp, "%s:%d" % (HOST, self.remote_port),
               "-sf", UAS, "-i", HOST, "-p", str(self.port),
               "-buff_size", "4194304", "-nostdin",
               "-trace_stat", "-stf", self.stats, "-fd", "1",
               "-trace_err", "-error_file",
               os.path.join(self.rundir, "uas_errors.log")]
        log("+ " + " ".join(cmd))
        out = open(os.path.join(self.rundir, "uas.out"), "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.rundir, stdout=out,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        if not wait_udp_bound(self.port, 5.0, self.proc):
            raise RuntimeError("the SIPp UAS did not bind port %d"
                               % self.port)

    def stop(self):
        if self.proc is None:
            return {}
        rb.stop_process(self.proc, 10)
        try:
            row = rb.read_sipp_stats(self.stats)
            return {"success": int(row["SuccessfulCall(C)"]),
                    "failed": int(row["FailedCall(C)"])}
        except (OSError, RuntimeError, KeyError, ValueError):
            return {}


# ---------------------------------------------------------------- servers

class Sippy:
    name = "sippy"
    scenario = UAC_NOAUTH

    def __init__(self, args, workdir):
        self.args = args
        self.dir = os.path.join(workdir, "sippy")
        os.makedirs(self.dir, exist_ok=True)
        self.logpath = os.path.join(self.dir, "b2bua.log")
        self.proc = None

    def start(self, port, uas_port):
        cmd = [self.args.sippy_b2bua, "-f", "-l", HOST, "-p", str(port),
               "-s", "%s:%d" % (HOST, uas_port), "-u", "-A", "0"]
        env = dict(os.environ, SIPLOG_BEND="none")
        log("+ SIPLOG_BEND=none " + " ".join(cmd))
        with open(self.logpath, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=self.dir, env=env)
        rb.wait_ready(self.proc, port, self.args.start_timeout, self.logpath)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        """SIGINT is sippy's way out; then SIGTERM/SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                rb.stop_process(self.proc, 5)


class KamailioProxy:
    name = "Kamailio"
    scenario = UAC_AUTH

    def __init__(self, args, workdir):
        self.args = args
        self.dir = os.path.join(workdir, "kamailio")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.logpath = None

    def start(self, port, uas_port):
        a = self.args
        run = tempfile.mkdtemp(prefix="run-", dir=self.dir)
        self.logpath = os.path.join(run, "kamailio.log")
        cmd = [a.kamailio, "-f", KAMAILIO_PROXY_CFG,
               "-A", "SIP_ADDR=" + HOST, "-A", "SIP_PORT=%d" % port,
               "-A", "CHILDREN=%d" % a.kamailio_children,
               "-A", 'UAS_URI="sip:%s:%d"' % (HOST, uas_port),
               "-m", "1024", "-M", "64", "-DD", "-E",
               "-P", os.path.join(run, "kamailio.pid"), "-Y", run, "-w", run]
        log("+ " + " ".join(cmd))
        with open(self.logpath, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=run)
        rb.wait_ready(self.proc, port, a.start_timeout, self.logpath)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            rb.stop_process(self.proc)


class Pbx:
    name = "PBX"
    scenario = UAC_AUTH

    def __init__(self, args, workdir):
        self.args = args
        self.server = PbxServer(args.twistd, workdir, args.pbx_config,
                                rb.user_range(args.callers),
                                features={"rtp_timeout": 0},
                                start_timeout=args.start_timeout)
        self.dir = self.server.dir

    def start(self, port, uas_port):
        self.server.start(port)

    @property
    def proc(self):
        return self.server.proc

    @property
    def pid(self):
        return self.server.pid

    def stop(self):
        self.server.stop()


# ------------------------------------------------------------------- runs

def run_rate(args, system, rate, slices, ports, workdir):
    rundir = os.path.join(workdir, "%s-rate%d" % (system.name, rate))
    os.makedirs(rundir)
    calls = int(round(rate * args.duration))
    server_port = free_port_outside(ports)
    uas_port = free_port_outside(ports)
    busy = rb.wait_idle(args.max_busy, args.wait_idle)
    load = load_average()
    log("== %s, target %d calls/s x %gs, load average %s, machine %.0f%% "
        "busy" % (system.name, rate, args.duration, load, busy * 100))
    system.start(server_port, uas_port)
    uas = Uas(args, rundir, uas_port, server_port)
    res = None
    try:
        if isinstance(system, Pbx):
            uas.register(server_port)
        uas.start()
        time.sleep(1.0)
        idle = rss_kb(system.pid)
        sampler = RssSampler(system.pid, 0.2)
        sampler.start()
        cpu0 = rb.process_tree_cpu(system.pid)
        foreign = rb.ForeignCpu()
        foreign.start()
        res = rb.run_load(args, server_port, rate, calls,
                          slices, os.path.join(rundir, "uac"), ports,
                          scenario=system.scenario,
                          extra=["-d", str(args.hold_ms)],
                          default_behaviors="all",
                          hold=args.hold_ms / 1000.0)
        res["foreign"] = foreign.stop()
        res["server_cpu"] = rb.process_tree_cpu(system.pid) - cpu0
        res["rss_peak"] = sampler.stop()
        res["rss_idle"] = idle
        res["sipp_concurrent"] = sipp_peak_concurrent(
            os.path.join(rundir, "uac"))
    finally:
        res_uas = uas.stop()
        system.stop()
    res["uas"] = res_uas
    res["busy_before"] = busy
    res["load_before"] = load
    res["system"] = system.name
    res["concurrent"] = rate * args.hold_ms / 1000.0
    res["kb_per_call"] = ((res["rss_peak"] - res["rss_idle"])
                          / res["concurrent"] if res["concurrent"] else 0.0)
    ok = clean(res, args)
    log("   %s %d/s: ok %d failed %d retrans %d  %.2fs => %.1f calls/s, "
        "server CPU %.2f ms/call (%.0f%% of one core), RSS idle %.1f MB "
        "peak %.1f MB => %.1f KB/call (%.0f concurrent; SIPp saw %d)%s"
        % (system.name, rate, res["success"], res["failed"], res["retrans"],
           res["elapsed"], res["rate"], cpu_ms(res), cpu_pct(res),
           res["rss_idle"] / 1024.0, res["rss_peak"] / 1024.0,
           res["kb_per_call"], res["concurrent"], res["sipp_concurrent"],
           "" if ok else "  (NOT clean)"))
    if rb.disturbed(res, args):
        log("   ! other processes used %.0f%% of the CPUs during this run"
            % (res["foreign"] * 100))
    for err in res["errors"]:
        log("   ! " + err)
    return res


def cpu_ms(res):
    return 1000.0 * res["server_cpu"] / res["success"] if res["success"] else 0.0


def cpu_pct(res):
    return 100.0 * res["server_cpu"] / res["wall"] if res["wall"] else 0.0


def clean(res, args):
    """No failure and the rate reached --keep-up of what SIPp's clock allows:
    the target x duration / (duration + hold)."""
    hold = args.hold_ms / 1000.0
    reachable = res["target"] * args.duration / (args.duration + hold)
    return (not res["failed"] and not res["errors"]
            and res["success"] == res["calls"]
            and res["rate"] >= args.keep_up * reachable)


def ensure_sippy(args, workdir):
    """sippy's b2bua: --sippy-b2bua, or pip install sippy into a venv in workdir."""
    if args.sippy_b2bua:
        return args.sippy_b2bua
    venv = os.path.join(workdir, "sippy-venv")
    python = shutil.which("python3") or "python3"
    log("+ %s -m venv %s && pip install sippy" % (python, venv))
    subprocess.run([python, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q",
                    "sippy"], check=True)
    return os.path.join(venv, "bin", "b2bua")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--systems", default="pbx,sippy,kamailio",
                   help="comma-separated, in this order (default "
                        "%(default)s)")
    p.add_argument("--rates", default="300",
                   help="target calls/s, comma-separated (default "
                        "%(default)s)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of load per rate (default %(default)s)")
    p.add_argument("--hold-ms", type=int, default=1000,
                   help="call hold time, SIPp -d (default %(default)s)")
    p.add_argument("--callers", type=int, default=1000,
                   help="caller extensions 100000.. (default %(default)s)")
    p.add_argument("--procs", type=int, default=None,
                   help="SIPp UAC processes (default: one per "
                        "--rate-per-sipp calls/s)")
    p.add_argument("--rate-per-sipp", type=int, default=200,
                   help="calls/s per SIPp UAC when --procs is not set "
                        "(default %(default)s)")
    p.add_argument("--stop-at-failure", action="store_true",
                   help="for a system, skip the higher rates after one "
                        "that is not clean")
    p.add_argument("--keep-up", type=float, default=0.95)
    p.add_argument("--max-busy", type=float, default=0.10)
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each run, wait up to this many seconds for "
                        "the machine to be idle")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--recv-timeout-ms", type=int, default=10000)
    p.add_argument("--sipp-timeout-margin", type=int, default=30)
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    p.add_argument("--kamailio", default=shutil.which("kamailio")
                   or "/usr/sbin/kamailio")
    p.add_argument("--kamailio-children", type=int, default=4)
    p.add_argument("--sippy-b2bua", default=None,
                   help="sippy's b2bua program (default: pip install sippy "
                        "into a virtualenv in the work directory)")
    p.add_argument("--pbx-config", default=DEFAULT_BASE_CONFIG,
                   help="base configuration of the PBX (default: the "
                        "repository's config.yml)")
    p.add_argument("--twistd",
                   default=os.path.join(os.path.dirname(sys.executable),
                                        "twistd"))
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory")
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    args.systems = [s.strip().lower() for s in args.systems.split(",")
                    if s.strip()]
    for s in args.systems:
        if s not in ("pbx", "sippy", "kamailio"):
            p.error("unknown system %s" % s)
    return args


def main(argv=None):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="call-bench-")
    log("work directory: %s" % workdir)
    if "sippy" in args.systems:
        args.sippy_b2bua = ensure_sippy(args, workdir)
    ports = set()
    callers = rb.user_range(args.callers)
    results = {}
    factories = {"pbx": Pbx, "sippy": Sippy, "kamailio": KamailioProxy}
    try:
        for key in args.systems:
            system = factories[key](args, workdir)
            results[system.name] = {}
            for rate in args.rates:
                procs = args.procs or max(
                    1, int(math.ceil(rate / float(args.rate_per_sipp))))
                slices = make_call_slices(
                    os.path.join(workdir), callers, procs)
                res = run_rate(args, system, rate, slices, ports, workdir)
                results[system.name][rate] = res
                time.sleep(args.settle)
                if args.stop_at_failure and not clean(res, args):
                    break
    finally:
        if args.keep:
            log("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(args, results)
    return 0


def report(args, results):
    today = datetime.date.today().isoformat()
    machine = rb.machine_description()
    print()
    print("| date | machine | system | load avg before | target calls/s "
          "| SIPp UACs | calls ok | failed | achieved calls/s "
          "| server CPU ms/call | server CPU % of one core "
          "| RSS idle MB | RSS peak MB | KB per call |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:"
          "|---:|")
    for name, by_rate in results.items():
        for rate, r in by_rate.items():
            flag = "" if clean(r, args) else " *"
            if rb.disturbed(r, args):
                flag += " (disturbed)"
            kb = "%.1f" % r["kb_per_call"] if name == "PBX" or \
                name == "sippy" else "-"
            print("| %s | %s | %s | %s | %d | %d | %d | %d | %.1f%s | %.2f "
                  "| %.0f | %.1f | %.1f | %s |"
                  % (today, machine, name, r["load_before"], rate,
                     r["procs"], r["success"], r["failed"], r["rate"], flag,
                     cpu_ms(r), cpu_pct(r), r["rss_idle"] / 1024.0,
                     r["rss_peak"] / 1024.0, kb))

    def best(by_rate):
        ok = [r for r in by_rate.values() if clean(r, args)]
        return max(ok, key=lambda r: r["rate"]) if ok else None

    pbx = results.get("PBX", {})
    bp = best(pbx)
    print()
    print("Highest clean rate per system; ratios PBX / peer (rate, and "
          "server CPU per call peer / PBX at the same target rate):")
    for name in results:
        b = best(results[name])
        print("- %s: %s" % (name, "%.1f calls/s (target %d)"
                            % (b["rate"], b["target"]) if b else "none clean"))
    for name in ("sippy", "Kamailio"):
        if name not in results or not pbx:
            continue
        b = best(results[name])
        if bp and b:
            print("- PBX / %s, highest clean rate: %.2f" % (name, bp["rate"] / b["rate"]))
        for rate in args.rates:
            x, y = pbx.get(rate), results[name].get(rate)
            if x and y and x["success"] and y["success"]:
                print("- at %d/s: achieved PBX / %s %.2f; CPU per call "
                      "%s / PBX %.2f" % (rate, name, x["rate"] / y["rate"]
                                         if y["rate"] else 0, name,
                                         cpu_ms(y) / cpu_ms(x)
                                         if cpu_ms(x) else 0))
    print()
    print("* = not clean (failures, or under %d%% of target x duration / "
          "(duration + hold)).  (disturbed) = other processes used more "
          "than %d%% of the CPUs during the run."
          % (round(args.keep_up * 100), round(args.max_busy * 100)))


if __name__ == "__main__":
    sys.exit(main())
