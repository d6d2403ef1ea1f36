"""The REST API keeps answering quickly while 200 calls are up: nothing blocks the reactor."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from calls import register_then_uas, run_sipp, sipp_report, stop_sipp, wait_sipp
from pbxproc import PBXProcess, have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("sipp"), reason="sipp is not installed")]

CALLS = 200
TOKEN = "load-test-token"


def get(pbx: PBXProcess, path: str) -> tuple[float, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{pbx.api_port}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=5) as answer:
        body = json.load(answer)
    return time.perf_counter() - began, body


def test_api_answers_within_50ms_with_200_calls_up(tmp_path):
    config = {
        "server": {"rtp_port_range_start": 22000, "rtp_port_range_end": 23998},  # below the ephemeral ports
        "features": {"rtp_timeout": 0},
        "api": {"tokens": [TOKEN]},
    }
    with PBXProcess(tmp_path / "pbx", **config) as pbx:
        callee = register_then_uas(pbx, "1002", "secret1002", "uas_load", tmp_path, calls=CALLS)
        caller = run_sipp("uac_load", pbx.sip_port, ["1001;secret1001;1002"] * CALLS, tmp_path,
                          "-r", "100", "-d", "8000", "-buff_size", "4194304", background=True, trace_msg=False)
        try:
            deadline = time.monotonic() + 15
            up = 0
            while time.monotonic() < deadline:
                _, status = get(pbx, "/api/calls")
                up = sum(1 for call in status["items"] if call["state"] == "answered")
                if up >= CALLS:
                    break
                time.sleep(0.2)
            assert up >= CALLS, up
            paths = ["/api/status", "/api/calls", "/api/registrations", "/api/health"]
            for path in paths:
                get(pbx, path)  # first use of a route is not what this measures
            latencies = []
            for path in paths * 15:
                took, _ = get(pbx, path)
                latencies.append(took)
            latencies.sort()
            p95 = latencies[int(len(latencies) * 0.95) - 1]
            print(f"API latency with {up} calls up: median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
                  f"95th percentile {p95 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
            # SIPp (caller and callee), the PBX and this client share two cores:
            # the odd request can wait for a CPU. 95 % within 50 ms, and none
            # held for long, is what "nothing blocks the reactor" can promise here.
            assert p95 < 0.050, latencies
            assert latencies[-1] < 0.250, latencies
            assert wait_sipp(caller, 60).returncode == 0, sipp_report(caller)
            assert wait_sipp(callee, 30).returncode == 0, sipp_report(callee)
        finally:
            stop_sipp(caller)
            stop_sipp(callee)
