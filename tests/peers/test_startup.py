"""Start-up and shut-down of the real twistd process."""

from __future__ import annotations

import subprocess

import yaml

from pbxproc import TWISTD, PBXProcess, options_ping, free_port


def run_twistd(directory, config: dict, timeout: float = 20) -> subprocess.CompletedProcess:
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [TWISTD, "--pidfile=", "-n", "pbx", "--config", str(path)],
        cwd=directory, capture_output=True, text=True, timeout=timeout,
    )


def test_port_conflict_stops_twistd_with_one_line(tmp_path):
    result = run_twistd(tmp_path, {
        "server": {"sip_port": free_port()},
        "api": {"port": 8080},
        "integrations": {"espocrm": {"enabled": True, "api_url": "http://localhost:8080/api/v1", "api_key": "k"}},
    })
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "integrations.espocrm.api_url" in output and "api (127.0.0.1:8080/tcp)" in output
    assert "Traceback" not in output


def test_bad_value_stops_twistd_naming_key_and_value(tmp_path):
    (tmp_path / "config.yml").write_text('server:\n  sip_port: "abc"\n')
    result = subprocess.run(
        [TWISTD, "--pidfile=", "-n", "pbx", "--config", str(tmp_path / "config.yml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode != 0
    assert 'server.sip_port: expected an integer 1-65535, got "abc"' in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_taken_sip_port_is_a_clear_error(tmp_path):
    with PBXProcess(tmp_path / "first") as first:
        result = run_twistd(tmp_path, {
            "server": {"sip_host": "127.0.0.1", "sip_port": first.sip_port,
                       "rtp_port_range_start": 22000, "rtp_port_range_end": 22100},
            "api": {"port": free_port()},
            "database": {"path": str(tmp_path / "second.db")},
        })
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{first.sip_port}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_sigterm_stops_cleanly_within_five_seconds(tmp_path):
    pbx = PBXProcess(tmp_path).start()
    took = pbx.stop()
    # twistd re-raises the signal after a clean shut-down, as a daemon should.
    assert pbx.process.returncode in (0, -15)
    assert took < 5.0
    log = pbx.log()
    assert "PBX stopped" in log and "Main loop terminated" in log
    assert options_ping(pbx.sip_port, 0.3) is None


def test_api_without_tokens_on_a_public_address_refuses_to_start(tmp_path):
    result = run_twistd(tmp_path, {
        "server": {"sip_host": "127.0.0.1", "sip_port": free_port()},
        "api": {"host": "0.0.0.0", "port": free_port(), "tokens": []},
        "database": {"path": str(tmp_path / "pbx.db")},
    })
    assert result.returncode != 0
    assert "api.tokens:" in result.stderr and "Traceback" not in result.stdout + result.stderr


def test_rest_api_is_served_in_the_same_process(tmp_path):
    import json
    import urllib.request

    with PBXProcess(tmp_path, api={"tokens": ["t0ken-for-tests"]}) as pbx:
        with urllib.request.urlopen(f"http://127.0.0.1:{pbx.api_port}/api/health", timeout=5) as answer:
            health = json.load(answer)
        assert health["status"] == "ok"
        request = urllib.request.Request(
            f"http://127.0.0.1:{pbx.api_port}/api/extensions",
            headers={"Authorization": "Bearer t0ken-for-tests"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = json.load(answer)
        assert [e["number"] for e in body["items"]] == ["1001", "1002", "1003"] and body["total"] == 3
        assert not any("password" in e or "ha1_md5" in e for e in body["items"])
