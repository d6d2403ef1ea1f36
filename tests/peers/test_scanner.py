"""SIP scanners find nothing: sipvicious' svwar cannot enumerate extensions."""

from __future__ import annotations

import subprocess

import pytest

from pbxproc import PBXProcess, free_port, have

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("svwar"), reason="sipvicious is not installed")]


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
def test_svwar_finds_no_extension(tmp_path, method):
    with PBXProcess(tmp_path) as pbx:
        result = subprocess.run(
            ["svwar", "-e1000-1010", "-m", method, "-p", str(pbx.sip_port), "-P", str(free_port()), "127.0.0.1"],
            capture_output=True, text=True, timeout=60,
        )
        output = result.stdout + result.stderr
        # It did talk to the PBX (a silent server would teach us nothing) ...
        assert "No server response" not in output, output
        # ... and learnt nothing: no table of extensions, for 1001-1003 that do exist.
        assert "found nothing" in output, output
        for number in ("1001", "1002", "1003"):
            assert f"| {number}" not in output
