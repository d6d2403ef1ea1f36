#!/usr/bin/env python3
"""Media benchmark: concurrent G.711 calls with RTP both ways through the relay.

A hand-run benchmark, not a test.  Run it with the PBX's virtualenv python
(its twistd starts the PBX; PyYAML writes the PBX's configuration).

For each number of concurrent calls N (--calls 100,200,300,400):

  direct     the same load with no relay: each phone sends straight to the
             other one.  This measures the generator itself: the jitter of
             its own pacing (and of the machine), the baseline the other
             figures are compared with.
  PBX        a fresh PBX (twistd -n pbx, generated config, RTP 30000-39999,
             features.rtp_timeout 0).  Calls are set up through its SIP
             socket by a minimal SIP UAC and UAS written here (sipload.py):
             the UAS registers as extension 2000 (REGISTER, 401, digest,
             200); each call is INVITE -> 407 -> ACK -> INVITE with MD5
             Proxy-Authorization -> (PBX -> UAS: INVITE, 200, ACK) -> 200 ->
             ACK, from caller 100000+i.  The phones' RTP sockets are the ones
             named in the SDP, so the relay latches on them at once.
  rtpengine  rtpengine's userspace daemon (Debian rtpengine-daemon, started
             with --table=-1: no kernel forwarding) on 127.0.0.1, sessions
             created over its ng control protocol (bencode over UDP: offer
             with the caller's SDP, answer with the callee's).

Then RTP flows for --duration seconds: every phone sends 50 packets/s (20 ms
PCMU frames: 12-byte RTP header + 160 bytes = 172 bytes), with sequence
numbers and timestamps, from W sender processes (multiprocessing, each
owning whole calls: both phones' sockets, so it sends and receives).  The
calls' send times are spread evenly over the 20 ms period, as independent
phones would be.  Receivers take the kernel's arrival time of each packet
(SO_TIMESTAMPNS), so the receiving process's own scheduling delay does not
count; the sender's pacing does, which is why the direct run is the
baseline.

Per run: packets sent and received (loss %), RFC 3550 interarrival jitter
at the receiver (the running estimate J, averaged over each stream's life,
then over streams; and the worst stream), the one-way delay (mean, and the
99th percentile of the per-stream maximum), the relay's CPU % of one core
and its RSS, the generator's CPU, and how late the sender was.  The jitter
the relay adds = relay jitter - direct jitter at the same N.

The relay's packet rate is N x 2 x 50 packets/s in (and as many out); the
highest rate with under --max-loss (0.1 %) loss is reported for the PBX and
for rtpengine, and their ratio.

Examples:

    .venv/bin/python bench/media_bench.py --calls 100,200,300,400 --duration 20
    .venv/bin/python bench/media_bench.py --calls 400,600,800 --systems pbx,rtpengine

Only 127.0.0.1 is used.  Phone RTP ports come from 20000-29999 (below
Linux's ephemeral range), the PBX's from 30000-39999, rtpengine's from
40000-49999.
"""

import argparse
import datetime
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import register_bench as rb  # noqa: E402
from benchpbx import (DEFAULT_BASE_CONFIG, PbxServer, RssSampler,  # noqa: E402
                      free_port_outside, load_average, rss_kb)
from rtpload import PhoneSockets, run_workers  # noqa: E402
from sipload import SipLoad  # noqa: E402
from rtpengine_ng import RtpEngine  # noqa: E402

HOST = rb.HOST
log = rb.log
PPS_PER_STREAM = 50


def relay_pps(calls):
    """Packets per second into the relay (as many go out)."""
    return calls * 2 * PPS_PER_STREAM


# ------------------------------------------------------------------ runs

def measure(args, label, calls, phones, targets, server_pid=None):
    """Push RTP for --duration s; the workers' totals plus server figures."""
    busy = rb.wait_idle(args.max_busy, args.wait_idle)
    load = load_average()
    log("   %s, %d calls (%d packets/s into the relay), load average %s, "
        "machine %.0f%% busy before" % (label, calls, relay_pps(calls), load,
                                       busy * 100))
    sampler = None
    if server_pid:
        idle = rss_kb(server_pid)
        sampler = RssSampler(server_pid, 0.5)
        sampler.start()
        cpu0 = rb.process_tree_cpu(server_pid)
    foreign = rb.ForeignCpu()
    foreign.start()
    t0 = time.monotonic()
    res = run_workers(phones, targets, args.duration, args.workers,
                      drain=args.drain)
    wall = time.monotonic() - t0
    res["foreign"] = foreign.stop()
    res["label"], res["calls"], res["load_before"] = label, calls, load
    res["busy_before"] = busy
    if server_pid:
        res["server_cpu_pct"] = (100.0 * (rb.process_tree_cpu(server_pid)
                                          - cpu0) / res["send_wall"])
        res["rss_peak"] = sampler.stop()
        res["rss_idle_before_rtp"] = idle
        res["rss_now"] = rss_kb(server_pid)
    res["wall"] = wall
    log("   => sent %d received %d loss %.4f%%  jitter %.3f ms (worst stream "
        "%.3f)  delay %.3f ms (p99 of max %.2f)  %s generator CPU %.0f%%  "
        "sender late max %.1f ms%s"
        % (res["sent"], res["received"], res["loss_pct"], res["jitter_ms"],
           res["jitter_max_ms"], res["delay_ms"], res["delay_p99max_ms"],
           ("relay CPU %.0f%% RSS %.1f MB  " % (res["server_cpu_pct"],
                                                res["rss_now"] / 1024.0))
           if server_pid else "",
           res["gen_cpu_pct"], res["late_max_ms"],
           "  (other jobs used %.0f%% of the CPUs)" % (res["foreign"] * 100)
           if rb.disturbed(res, args) else ""))
    return res


def run_direct(args, calls):
    phones = PhoneSockets(calls, args.phone_port_base)
    try:
        # a -> b's socket, b -> a's socket: no relay
        targets = [((HOST, phones.b_port(i)), (HOST, phones.a_port(i)))
                   for i in range(calls)]
        return measure(args, "direct", calls, phones, targets)
    finally:
        phones.close()


def run_pbx(args, calls, workdir, ports):
    port = free_port_outside(ports)
    server = PbxServer(args.twistd, os.path.join(workdir, "pbx-%d" % calls),
                       args.pbx_config,
                       rb.user_range(max(calls, 1)),
                       rtp_range=(30000, 39999),
                       features={"rtp_timeout": 0, "max_call_duration": 0},
                       start_timeout=args.start_timeout)
    server.start(port)
    phones = PhoneSockets(calls, args.phone_port_base)
    sip = SipLoad(HOST, port)
    try:
        idle = rss_kb(server.pid)
        sip.register_uas("2000", "pw2000")
        t0 = time.monotonic()
        legs = sip.setup_calls(
            [("%d" % (rb.FIRST_USER + i), rb.password_for(rb.FIRST_USER + i),
              phones.a_port(i), phones.b_port(i)) for i in range(calls)])
        setup = time.monotonic() - t0
        log("   PBX: %d calls set up in %.1f s, RSS %.1f MB -> %.1f MB"
            % (calls, setup, idle / 1024.0, rss_kb(server.pid) / 1024.0))
        established = rss_kb(server.pid)
        # a sends to the PBX's leg-A port (from the 200 to the caller),
        # b to the leg-B port (from the INVITE the callee got)
        targets = [((HOST, a), (HOST, b)) for a, b in legs]
        res = measure(args, "PBX", calls, phones, targets, server.pid)
        res["rss_idle"] = idle
        res["rss_established"] = established
        res["kb_per_call"] = (established - idle) / float(calls)
        res["setup_s"] = setup
        sip.hangup_all()
        return res
    finally:
        sip.close()
        phones.close()
        server.stop()


def run_rtpengine(args, calls, engine):
    phones = PhoneSockets(calls, args.phone_port_base)
    try:
        legs = []
        for i in range(calls):
            legs.append(engine.create_session("bench-%d-%d" % (calls, i),
                                              phones.a_port(i),
                                              phones.b_port(i)))
        targets = [((HOST, a), (HOST, b)) for a, b in legs]
        res = measure(args, "rtpengine", calls, phones, targets,
                      engine.proc.pid)
        for i in range(calls):
            engine.delete_session("bench-%d-%d" % (calls, i))
        return res
    finally:
        phones.close()


# ------------------------------------------------------------------ main

def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--calls", default="100,200,300,400",
                   help="concurrent calls per run, comma-separated "
                        "(default %(default)s)")
    p.add_argument("--systems", default="direct,pbx,rtpengine",
                   help="comma-separated: direct, pbx, rtpengine "
                        "(default %(default)s)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds of RTP per run (default %(default)s)")
    p.add_argument("--drain", type=float, default=1.0,
                   help="seconds to keep receiving after the last packet "
                        "is sent (default %(default)s)")
    p.add_argument("--workers", type=int, default=4,
                   help="sender/receiver processes (default %(default)s)")
    p.add_argument("--max-loss", type=float, default=0.1,
                   help="loss %% under which a rate counts (default "
                        "%(default)s)")
    p.add_argument("--max-delay-ms", type=float, default=20.0,
                   help="mean one-way delay (ms) under which a rate counts: "
                        "a saturated relay loses little (deep socket "
                        "buffers) but delays by seconds (default "
                        "%(default)s)")
    p.add_argument("--phone-port-base", type=int, default=20000)
    p.add_argument("--max-busy", type=float, default=0.10)
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each run, wait up to this many seconds for "
                        "the machine to be idle")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--pbx-config", default=DEFAULT_BASE_CONFIG)
    p.add_argument("--twistd",
                   default=os.path.join(os.path.dirname(sys.executable),
                                        "twistd"))
    p.add_argument("--rtpengine", default=shutil.which("rtpengine")
                   or "/usr/bin/rtpengine")
    p.add_argument("--rtpengine-threads", type=int, default=None,
                   help="rtpengine --num-threads (default: its own, one "
                        "per core)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.calls = [int(c) for c in args.calls.split(",") if c.strip()]
    args.systems = [s.strip().lower() for s in args.systems.split(",")
                    if s.strip()]
    for s in args.systems:
        if s not in ("direct", "pbx", "rtpengine"):
            p.error("unknown system %s" % s)
    if max(args.calls) * 2 > 10000 - 2:
        p.error("at most 4999 calls (phone ports 20000-29999)")
    return args


def main(argv=None):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="media-bench-")
    log("work directory: %s" % workdir)
    ports = set()
    results = {s: {} for s in args.systems}
    try:
        for system in args.systems:
            log("== %s" % system)
            if system == "rtpengine":
                engine = RtpEngine(args.rtpengine, workdir,
                                   threads=args.rtpengine_threads)
                try:
                    engine.start(free_port_outside(ports))
                except RuntimeError as e:
                    log("   ! rtpengine could not start: %s" % e)
                    results[system] = {"error": str(e)}
                    continue
            try:
                for calls in args.calls:
                    if system == "direct":
                        res = run_direct(args, calls)
                    elif system == "pbx":
                        res = run_pbx(args, calls, workdir, ports)
                    else:
                        res = run_rtpengine(args, calls, engine)
                    results[system][calls] = res
                    time.sleep(args.settle)
            finally:
                if system == "rtpengine":
                    engine.stop()
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
    direct = results.get("direct", {})
    print()
    print("| date | machine | system | calls | relay packets/s in "
          "| load avg before | sent | received | loss % | jitter ms "
          "| added jitter ms | worst stream jitter ms | mean delay ms "
          "| relay CPU % of one core | relay RSS MB | generator CPU % "
          "| sender late max ms |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:"
          "|---:|---:|---:|---:|")
    for system, by_calls in results.items():
        if "error" in by_calls:
            print("| %s | %s | %s | - | - | - | not run: %s |"
                  % (today, machine, system, by_calls["error"]))
            continue
        for calls, r in by_calls.items():
            base = direct.get(calls)
            added = ("%.3f" % (r["jitter_ms"] - base["jitter_ms"])
                     if base and system != "direct" else "-")
            flag = " (disturbed)" if rb.disturbed(r, args) else ""
            print("| %s | %s | %s%s | %d | %d | %s | %d | %d | %.4f | %.3f "
                  "| %s | %.3f | %.3f | %s | %s | %.0f | %.1f |"
                  % (today, machine, system, flag, calls,
                     relay_pps(calls) if system != "direct" else 0,
                     r["load_before"], r["sent"], r["received"],
                     r["loss_pct"], r["jitter_ms"], added,
                     r["jitter_max_ms"], r["delay_ms"],
                     "%.0f" % r["server_cpu_pct"] if "server_cpu_pct" in r
                     else "-",
                     "%.1f" % (r["rss_now"] / 1024.0) if "rss_now" in r
                     else "-",
                     r["gen_cpu_pct"], r["late_max_ms"]))
    pbx = results.get("pbx", {})
    if pbx and "error" not in pbx:
        print()
        print("PBX memory: idle RSS, after the calls are set up (before RTP), "
              "KB per established call:")
        for calls, r in pbx.items():
            print("- %d calls: %.1f MB -> %.1f MB, %.1f KB/call (setup "
                  "took %.1f s)" % (calls, r["rss_idle"] / 1024.0,
                                     r["rss_established"] / 1024.0,
                                     r["kb_per_call"], r["setup_s"]))

    def best(by_calls):
        if not by_calls or "error" in by_calls:
            return None
        ok = [c for c, r in by_calls.items() if r["loss_pct"] < args.max_loss
              and r["delay_ms"] < args.max_delay_ms]
        return max(ok) if ok else None

    print()
    bp, be = best(pbx), best(results.get("rtpengine"))
    for name, b in (("PBX", bp), ("rtpengine", be)):
        if name.lower() in results:
            print("- %s: highest load with < %g%% loss and < %g ms mean "
                  "delay: %s"
                  % (name, args.max_loss, args.max_delay_ms,
                     "%d calls = %d packets/s in" % (b, relay_pps(b))
                     if b else "none"))
    if bp and be:
        print("- PBX / rtpengine packet rate: %.2f%s"
              % (relay_pps(bp) / float(relay_pps(be)),
                 " (rtpengine did not lose packets at the highest load "
                 "tried: a lower bound of its rate, an upper bound of the "
                 "ratio)" if be == max(args.calls) else ""))


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    sys.exit(main())
