"""Tests for pbx.ports: what is opened, what is called, what collides."""

from __future__ import annotations

from pathlib import Path

from pbx.config import load_config, parse_config
from pbx.ports import Listener, LocalService, build_port_plan, find_conflicts, format_port_plan

ROOT = Path(__file__).resolve().parent.parent


def conflicts_of(text: str) -> list[str]:
    return find_conflicts(build_port_plan(parse_config(text, {})))


def test_default_plan_lists_every_listener() -> None:
    plan = build_port_plan(parse_config("", {}))
    assert plan.listeners == (
        Listener("sip", "udp", "0.0.0.0", 5060, 5060, "server.sip_host, server.sip_port"),
        Listener("sip", "tcp", "0.0.0.0", 5060, 5060,
                 "server.sip_host, server.sip_port, server.sip_tcp"),
        Listener("rtp", "udp", "0.0.0.0", 10000, 20000,
                 "server.rtp_port_range_start, server.rtp_port_range_end"),
        Listener("api", "tcp", "127.0.0.1", 8080, 8080, "api.host, api.port"),
    )


def test_default_plan_lists_local_integrations_only() -> None:
    plan = build_port_plan(parse_config("", {}))
    # Jitsi (meet.jit.si) and Zoom (zoom.us) are remote: not in the plan.
    assert [(s.key, s.host, s.port, s.enabled) for s in plan.services] == [
        ("integrations.matrix.homeserver_url", "localhost", 8008, False),
        ("integrations.espocrm.api_url", "localhost", 8000, False),
    ]


def test_sip_tcp_off_drops_the_tcp_listener() -> None:
    plan = build_port_plan(parse_config("server:\n  sip_tcp: false\n", {}))
    assert [(l.role, l.protocol) for l in plan.listeners] == [
        ("sip", "udp"), ("rtp", "udp"), ("api", "tcp")]


def test_service_ports_default_by_scheme_and_local_hosts() -> None:
    plan = build_port_plan(parse_config(
        "server:\n  sip_host: 192.0.2.10\n  external_ip: 203.0.113.5\n"
        "integrations:\n"
        "  jitsi:\n    server_url: https://203.0.113.5\n"
        "  matrix:\n    homeserver_url: http://[::1]\n"
        "  espocrm:\n    api_url: http://192.0.2.10:8000/api/v1\n"
        "  zoom:\n    api_base_url: http://127.0.0.2:9000/v2\n"
        "    oauth_url: https://zoom.us/oauth/token\n", {}))
    assert plan.services == (
        LocalService("integrations.jitsi.server_url", "jitsi", "https://203.0.113.5",
                     "203.0.113.5", 443, False),
        LocalService("integrations.matrix.homeserver_url", "matrix", "http://[::1]",
                     "::1", 80, False),
        LocalService("integrations.espocrm.api_url", "espocrm",
                     "http://192.0.2.10:8000/api/v1", "192.0.2.10", 8000, False),
        LocalService("integrations.zoom.api_base_url", "zoom", "http://127.0.0.2:9000/v2",
                     "127.0.0.2", 9000, False),
    )


def test_shipped_config_has_no_conflicts() -> None:
    config = load_config(str(ROOT / "config.yml"), environ={})
    assert find_conflicts(build_port_plan(config)) == []


def test_defaults_have_no_conflicts() -> None:
    assert conflicts_of("") == []


def test_espocrm_on_the_api_port() -> None:
    assert conflicts_of(
        "integrations:\n  espocrm:\n    enabled: true\n"
        "    api_url: http://localhost:8080/api/v1\n"
    ) == ["integrations.espocrm.api_url (localhost:8080/tcp) collides with api (127.0.0.1:8080/tcp)"]


def test_disabled_integration_does_not_conflict() -> None:
    assert conflicts_of(
        "integrations:\n  espocrm:\n    enabled: false\n"
        "    api_url: http://localhost:8080/api/v1\n"
    ) == []


def test_jitsi_and_espocrm_both_on_https_localhost() -> None:
    assert conflicts_of(
        "integrations:\n"
        "  jitsi:\n    enabled: true\n    server_url: https://localhost\n"
        "  espocrm:\n    enabled: true\n    api_url: https://localhost/api/v1\n"
    ) == ["integrations.espocrm.api_url (localhost:443/tcp) collides with "
          "integrations.jitsi.server_url (localhost:443/tcp)"]


def test_loopback_spellings_are_the_same_server() -> None:
    assert conflicts_of(
        "integrations:\n"
        "  jitsi:\n    enabled: true\n    server_url: https://127.0.0.1:8443\n"
        "  matrix:\n    enabled: true\n    homeserver_url: http://localhost:8443\n"
    ) == ["integrations.matrix.homeserver_url (localhost:8443/tcp) collides with "
          "integrations.jitsi.server_url (127.0.0.1:8443/tcp)"]


def test_one_enabled_one_disabled_integration_do_not_conflict() -> None:
    assert conflicts_of(
        "integrations:\n"
        "  jitsi:\n    enabled: true\n    server_url: https://localhost\n"
        "  espocrm:\n    api_url: https://localhost/api/v1\n"
    ) == []


def test_zoom_urls_on_the_same_port_are_one_integration() -> None:
    assert conflicts_of(
        "integrations:\n  zoom:\n    enabled: true\n"
        "    api_base_url: http://localhost:9000/v2\n"
        "    oauth_url: http://localhost:9000/oauth/token\n"
    ) == []


def test_rtp_range_covering_sip_port() -> None:
    assert conflicts_of(
        "server:\n  rtp_port_range_start: 5000\n  rtp_port_range_end: 6000\n"
    ) == ["rtp (0.0.0.0:5000-6000/udp) collides with sip (0.0.0.0:5060/udp)"]


def test_rtp_range_ending_just_below_sip_port_is_fine() -> None:
    assert conflicts_of(
        "server:\n  rtp_port_range_start: 4000\n  rtp_port_range_end: 5059\n") == []


def test_api_on_the_sip_port_collides_over_tcp_only() -> None:
    assert conflicts_of("api:\n  port: 5060\n") == [
        "api (127.0.0.1:5060/tcp) collides with sip (0.0.0.0:5060/tcp)"]
    assert conflicts_of("server:\n  sip_tcp: false\napi:\n  port: 5060\n") == []


def test_distinct_bind_addresses_do_not_overlap() -> None:
    assert conflicts_of(
        "server:\n  sip_host: 192.0.2.10\napi:\n  host: 127.0.0.1\n  port: 5060\n") == []


def test_integration_on_external_ip_reaches_wildcard_listener() -> None:
    assert conflicts_of(
        "server:\n  external_ip: 203.0.113.5\n"
        "integrations:\n  matrix:\n    enabled: true\n"
        "    homeserver_url: http://203.0.113.5:5060\n"
    ) == ["integrations.matrix.homeserver_url (203.0.113.5:5060/tcp) collides with "
          "sip (0.0.0.0:5060/tcp)"]


def test_integration_on_other_loopback_address_misses_api() -> None:
    # api binds 127.0.0.1 only; 127.0.0.2:8080 is another socket.
    assert conflicts_of(
        "integrations:\n  espocrm:\n    enabled: true\n    api_url: http://127.0.0.2:8080\n"
    ) == []


def test_format_port_plan_is_an_aligned_table() -> None:
    text = format_port_plan(build_port_plan(parse_config("", {})))
    lines = text.splitlines()
    assert lines[0].split() == ["ROLE", "PROTO", "ADDRESS", "PORT(S)", "NOTE"]
    assert lines[3].split()[:4] == ["rtp", "udp", "0.0.0.0", "10000-20000"]
    assert lines[5].split()[:4] == ["integrations.matrix.homeserver_url", "tcp", "localhost",
                                    "8008"]
    assert "disabled" in lines[5]
    # Every column starts at the same offset on every line.
    for header in ("PROTO", "ADDRESS", "PORT(S)", "NOTE"):
        column = lines[0].index(header)
        for line in lines[1:]:
            assert line[column - 2:column] == "  " and line[column] != " "
    assert len(lines) == 7
