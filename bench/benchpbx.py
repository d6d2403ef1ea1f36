"""Shared pieces of the call and media benchmarks (call_bench.py, media_bench.py).

Starting the PBX with a generated configuration, and reading a process's
memory.  Everything generic (free ports, waiting for a SIP server, stopping
processes, CPU accounting, machine description) comes from register_bench.py.
"""

import os
import subprocess
import threading
import time

from register_bench import (HOST, free_udp_port, log, password_for,  # noqa: F401
                            stop_process, tail, wait_ready)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_BASE_CONFIG = os.path.join(ROOT, "config.yml")
CALLEE = "2000"
CALLEE_PASSWORD = "pw2000"


def free_port_outside(taken, low=20000, high=49999):
    """free_udp_port(), but never in [low, high]: the RTP ranges of the
    phones (20000-29999), the PBX (30000-39999) and rtpengine (40000-49999);
    the PBX refuses to start when its SIP port falls in its RTP range."""
    for _ in range(200):
        port = free_udp_port(taken)
        if not low <= port <= high:
            return port
    raise RuntimeError("no free port outside %d-%d" % (low, high))


def rss_kb(pid):
    """Resident set size of a process in KiB (VmRSS), or 0 if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples VmRSS of `pid` every `interval` s until stop(); keeps the peak."""

    def __init__(self, pid, interval=0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = rss_kb(pid)
        self.samples = []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            value = rss_kb(self.pid)
            self.samples.append((time.monotonic(), value))
            self.peak = max(self.peak, value)
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join(5)
        return self.peak


def write_call_config(base_path, out_path, callers, port, db_path,
                      rtp_range=(30000, 39999), api_port=None,
                      features=None):
    """The base YAML config with the benchmark's settings:

      server.sip_host = 127.0.0.1, server.sip_port = port,
      server.rtp_port_range_start/_end = rtp_range,
      api on 127.0.0.1:api_port (a free port, so the port plan never
      conflicts with a local service), database.path = db_path,
      features.* = `features` (e.g. rtp_timeout: 0),
      extensions = the callers (password "pw" + number) and the callee
      2000 (password pw2000).
    """
    import yaml  # the PBX's virtualenv has PyYAML
    with open(base_path, "r", encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    server = data.setdefault("server", {}) or {}
    server.update({"sip_host": HOST, "sip_port": port,
                   "rtp_port_range_start": rtp_range[0],
                   "rtp_port_range_end": rtp_range[1]})
    data["server"] = server
    api = data.get("api") or {}
    api.update({"host": HOST,
                "port": api_port or free_port_outside(set())})
    data["api"] = api
    database = data.get("database") or {}
    database["path"] = db_path
    data["database"] = database
    feats = data.get("features") or {}
    feats.update(features or {})
    data["features"] = feats
    data["groups"] = []
    # No message-waiting NOTIFYs to the SIPp callee (its scenario does not
    # expect them) and no voicemail answering in place of a busy callee.
    data["voicemail"] = {"enabled": False}
    exts = [{"number": str(u), "name": "Caller %s" % u,
             "password": password_for(u)} for u in callers]
    exts.append({"number": CALLEE, "name": "Callee",
                 "password": CALLEE_PASSWORD})
    data["extensions"] = exts
    with open(out_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False)


class PbxServer:
    """The PBX under test: `twistd -n pbx --config GENERATED.yml`."""

    name = "PBX"

    def __init__(self, twistd, workdir, base_config, callers,
                 rtp_range=(30000, 39999), features=None, start_timeout=30.0):
        self.twistd = twistd
        self.dir = os.path.join(workdir, "pbx")
        os.makedirs(self.dir, exist_ok=True)
        self.logpath = os.path.join(self.dir, "twistd.log")
        self.config = os.path.join(self.dir, "config.yml")
        self.base_config = base_config
        self.callers = callers
        self.rtp_range = rtp_range
        self.features = features or {}
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None

    def start(self, port):
        self.port = port
        write_call_config(self.base_config, self.config, self.callers, port,
                          os.path.join(self.dir, "bench.db"),
                          rtp_range=self.rtp_range, features=self.features)
        cmd = [self.twistd, "-n",
               "--pidfile", os.path.join(self.dir, "twistd.pid"),
               "--logfile", self.logpath,
               "pbx", "--config", self.config]
        log("+ " + " ".join(cmd))
        with open(os.path.join(self.dir, "twistd.out"), "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
        try:
            wait_ready(self.proc, port, self.start_timeout, self.logpath)
        except RuntimeError as e:
            raise RuntimeError("%s\ntwistd output:\n%s" % (
                e, tail(os.path.join(self.dir, "twistd.out"))))

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"
