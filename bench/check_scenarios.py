#!/usr/bin/env python3
"""Check the SIPp registration scenarios against the Kamailio yardstick.

Starts bench/kamailio/kamailio.cfg on a free port of 127.0.0.1 and plays
each scenario of tests/peers/scenarios/ (and bench/register/register_load.xml)
with users whose passwords are right or wrong, expecting SIPp to pass or
fail accordingly.  The failing cases show that both Kamailio (a wrong
password is refused) and the scenarios (a 200 to a wrong password fails
register_wrong_password.xml) really check something.

    python3 bench/check_scenarios.py [--keep]

Standard library only; needs sipp and kamailio.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import register_bench as rb  # noqa: E402
from make_users import password_for  # noqa: E402

SCENARIOS = os.path.join(os.path.dirname(HERE), "tests", "peers", "scenarios")


def sipp(args, port, scenario, csv_lines, workdir, *extra):
    csv = os.path.join(workdir, os.path.basename(scenario) + ".csv")
    with open(csv, "w") as f:
        f.write("SEQUENTIAL\n" + "".join(line + "\n" for line in csv_lines))
    cmd = [args.sipp, "%s:%d" % (rb.HOST, port), "-sf", scenario,
           "-inf", csv, "-m", str(len(csv_lines)), "-i", rb.HOST, "-p", "0",
           "-recv_timeout", "5000", "-max_non_invite_retrans", "3",
           "-nostdin"] + list(extra)
    return subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          timeout=60).returncode


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    p.add_argument("--kamailio", default=shutil.which("kamailio")
                   or "/usr/sbin/kamailio")
    args = p.parse_args(argv)
    # what the Kamailio class reads
    args.kamailio_children, args.kamailio_shm, args.kamailio_pkg = 2, 64, 8
    args.start_timeout = 30.0

    workdir = tempfile.mkdtemp(prefix="check-scenarios-")
    good = ["%d;%s" % (u, password_for(u)) for u in (100000, 100001)]
    bad = ["%d;not-%s" % (u, password_for(u)) for u in (100002, 100003)]
    probe_log = os.path.join(workdir, "probe.log")

    def scen(name):
        return os.path.join(SCENARIOS, name)

    checks = [
        # (description, scenario, csv lines, extra flags, expect success)
        ("register.xml, right passwords", scen("register.xml"), good, (), True),
        ("register.xml, wrong passwords", scen("register.xml"), bad, (), False),
        ("register_wrong_password.xml, wrong passwords",
         scen("register_wrong_password.xml"), bad, (), True),
        ("register_wrong_password.xml, right passwords (200 must fail it)",
         scen("register_wrong_password.xml"), good, (), False),
        ("register_unregister.xml, right passwords",
         scen("register_unregister.xml"), good, (), True),
        ("register_unregister.xml, wrong passwords",
         scen("register_unregister.xml"), bad, (), False),
        ("register_probe.xml, known and unknown user",
         scen("register_probe.xml"), ["100000", "nosuchuser"],
         ("-trace_logs", "-log_file", probe_log), True),
        ("register_load.xml, right passwords",
         rb.LOAD_SCENARIO, good, (), True),
    ]

    server = rb.Kamailio(args, workdir)
    port = rb.free_udp_port(set())
    passed = failed = 0
    try:
        server.start(port, None)
        for desc, scenario, lines, extra, expect in checks:
            rc = sipp(args, port, scenario, lines, workdir, *extra)
            ok = (rc == 0) == expect
            print("%s  %s  (sipp exit %d, expected %s)"
                  % ("PASS" if ok else "FAIL", desc, rc,
                     "0" if expect else "non-zero"))
            passed, failed = passed + ok, failed + (not ok)
        # the probe must have logged one challenge per user, alike but for
        # the nonce
        with open(probe_log) as f:
            shapes = [re.sub(r'nonce="[^"]*"', 'nonce="*"',
                             ln.split("WWW-Authenticate:", 1)[1].strip())
                      for ln in f if ln.startswith("PROBE")]
        ok = len(shapes) == 2 and shapes[0] == shapes[1]
        print("%s  register_probe.xml logged the same challenge for both "
              "users: %s" % ("PASS" if ok else "FAIL",
                             shapes[0] if shapes else "(nothing)"))
        passed, failed = passed + ok, failed + (not ok)
    finally:
        server.stop()
        if args.keep:
            print("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
