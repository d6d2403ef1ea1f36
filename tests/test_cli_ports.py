"""Tests for ``python -m pbx ports``, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_ports(*args: str) -> subprocess.CompletedProcess[str]:
    # Drop PBX_* so the shipped defaults apply whatever the caller's shell has.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBX_")}
    return subprocess.run(
        [sys.executable, "-m", "pbx", "ports", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_shipped_config_exits_0() -> None:
    result = run_ports("--config", "config.yml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ROLE", "PROTO", "ADDRESS", "PORT(S)", "NOTE"]
    assert lines[1].split()[:4] == ["sip", "udp", "0.0.0.0", "5060"]
    assert lines[-1] == "no conflicts"


def test_conflict_exits_1_and_names_both_sides(tmp_path: Path) -> None:
    config = tmp_path / "pbx.yml"
    config.write_text(
        "integrations:\n  espocrm:\n    enabled: true\n"
        "    api_url: http://localhost:8080/api/v1\n")
    result = run_ports("--config", str(config))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-2:] == [
        "1 conflict:",
        "  integrations.espocrm.api_url (localhost:8080/tcp) collides with api (127.0.0.1:8080/tcp)",
    ]


def test_config_error_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "pbx.yml"
    config.write_text("server:\n  sip_port: abc\n")
    result = run_ports("--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == 'error: server.sip_port: expected an integer 1-65535, got "abc"\n'


def test_missing_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "absent.yml"
    result = run_ports("--config", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {config}: cannot read configuration: No such file or directory\n")


def test_secret_never_printed(tmp_path: Path) -> None:
    config = tmp_path / "pbx.yml"
    config.write_text("extensions:\n- number: 1001\n  password: 31337\n")
    result = run_ports("--config", str(config))
    assert result.returncode == 2
    assert "31337" not in result.stderr + result.stdout
    assert result.stderr == (
        "error: extensions[0].password: expected a non-empty string, got <hidden>\n")


def test_unknown_keys_are_warned_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "pbx.yml"
    config.write_text("server:\n  foo: 1\n")
    result = run_ports("--config", str(config))
    assert result.returncode == 0
    assert result.stderr == 'warning: unknown key "server.foo" ignored\n'
