"""Registration with a real SIP peer: SIPp 3.6 (MD5 digest)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from pbxproc import PBXProcess, have

SCENARIOS = Path(__file__).parent / "scenarios"
pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have("sipp"), reason="sipp is not installed")]


@pytest.fixture(scope="module")
def pbx(tmp_path_factory):
    with PBXProcess(tmp_path_factory.mktemp("pbx"), registrar={"min_expires": 1}) as process:
        yield process


def sipp(pbx: PBXProcess, scenario: str, users: list[str], workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    csv = workdir / f"{scenario}.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(u + "\n" for u in users))
    return subprocess.run(
        ["sipp", f"127.0.0.1:{pbx.sip_port}", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-inf", str(csv),
         "-m", str(len(users)), "-i", "127.0.0.1", "-p", "0", "-recv_timeout", "5000",
         "-max_non_invite_retrans", "3", "-nostdin", *extra],
        cwd=workdir, capture_output=True, text=True, timeout=60,
    )


def bindings_in_db(pbx: PBXProcess, aor: str) -> list[str]:
    with sqlite3.connect(pbx.directory / "pbx.db") as db:
        return [row[0] for row in db.execute("SELECT contact FROM bindings WHERE aor = ?", (aor,))]


def test_register_with_md5_digest(pbx, tmp_path):
    result = sipp(pbx, "register", ["1001;secret1001"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    time.sleep(1.5)  # bindings are written behind, once a second
    assert any(c.startswith("sip:1001@127.0.0.1:") for c in bindings_in_db(pbx, "1001"))


def test_wrong_password_is_refused(pbx, tmp_path):
    result = sipp(pbx, "register_wrong_password", ["1002;not-the-password"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    # The scenario itself is checked: with the right password it must fail.
    control = sipp(pbx, "register_wrong_password", ["1002;secret1002"], tmp_path)
    assert control.returncode != 0


def test_unknown_extension_gets_the_same_challenge(pbx, tmp_path):
    log = tmp_path / "probe.log"
    result = sipp(pbx, "register_probe", ["1001", "1999"], tmp_path, "-trace_logs", "-log_file", str(log))
    assert result.returncode == 0, result.stdout[-2000:]
    lines = [line for line in log.read_text().splitlines() if line.startswith("PROBE")]
    assert len(lines) == 2
    shapes = [re.sub(r'nonce="[^"]*"', 'nonce="*"', line.split("WWW-Authenticate:", 1)[1]) for line in lines]
    assert shapes[0] == shapes[1]
    assert 'realm="' in shapes[0] and "algorithm=MD5" in shapes[0]


def test_expires_zero_removes_the_binding(pbx, tmp_path):
    result = sipp(pbx, "register_unregister", ["1003;secret1003"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    time.sleep(1.5)
    assert not [c for c in bindings_in_db(pbx, "1003") if "sippunreg" in c]
