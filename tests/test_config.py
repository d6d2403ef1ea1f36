"""Tests for pbx.config: defaults, ${VAR} substitution, one-line errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from pbx.config import (
    AutoAttendantConfig,
    Config,
    ConfigError,
    FeaturesConfig,
    GroupConfig,
    MusicOnHoldConfig,
    VoicemailConfig,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_file_gives_defaults() -> None:
    config = parse_config("", {})
    assert config.server.sip_host == "0.0.0.0"
    assert config.server.sip_port == 5060
    assert config.server.external_ip is None
    assert (config.server.rtp_port_range_start, config.server.rtp_port_range_end) == (10000, 20000)
    assert config.server.server_name == "Twisted PBX"
    assert config.server.sip_tcp is True
    assert (config.sip.timer_t1, config.sip.timer_t2, config.sip.timer_t4) == (0.5, 4.0, 5.0)
    assert config.sip.max_message_size == 65535
    assert config.auth.realm == "pbx"
    assert config.auth.algorithms == ("MD5",)
    assert config.auth.nonce_ttl == 300
    assert (config.registrar.min_expires, config.registrar.max_expires,
            config.registrar.default_expires) == (60, 3600, 3600)
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8080)
    assert config.api.tokens == ()
    assert config.api.cors_origins == ()
    assert (config.database.type, config.database.path) == ("sqlite", "pbx.db")
    assert config.dialplan == {"internal": "^[1-9][0-9]{3}$"}
    assert config.extensions == ()
    assert config.features == FeaturesConfig() and config.groups == ()
    assert config.integrations.timeout == 5.0
    assert config.integrations.jitsi.server_url == "https://meet.jit.si"
    assert config.integrations.jitsi.token_ttl == 3600
    assert config.integrations.matrix.homeserver_url == "http://localhost:8008"
    assert config.integrations.matrix.missed_call_notifications is True
    assert config.integrations.espocrm.api_url == "http://localhost:8000/api/v1"
    assert config.integrations.espocrm.auto_create_contacts is False
    assert config.integrations.zoom.api_base_url == "https://api.zoom.us/v2"
    assert config.integrations.zoom.oauth_url == "https://zoom.us/oauth/token"
    assert config.integrations.zoom.user == "me"
    assert not any(i.enabled for i in (config.integrations.jitsi, config.integrations.matrix,
                                       config.integrations.espocrm, config.integrations.zoom))
    assert config.warnings == ()


def test_config_is_frozen() -> None:
    config = parse_config("", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.sip_port = 5070  # type: ignore[misc]


def test_shipped_config_loads_without_warnings() -> None:
    config = load_config(str(ROOT / "config.yml"), environ={})
    assert config.warnings == ()
    assert [e.number for e in config.extensions] == ["1001", "1002", "1003"]
    assert config.extensions[0].password == "1001secret"
    assert config.extensions[0].voicemail_pin == "1234"
    assert config.extensions[0].email == "alice@example.com"
    assert config.auth.algorithms == ("MD5",)
    assert config.api.tokens == ()


def test_load_config_never_writes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pbx.yml"
    path.write_text("server:\n  sip_port: 5070\n  foo: 1\n")
    before = path.read_bytes(), os.stat(path).st_mtime_ns
    assert load_config(str(path), {}).server.sip_port == 5070
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_env_variable_set() -> None:
    config = parse_config(
        "extensions:\n- number: 1001\n  password: ${PW}\n", {"PW": "from-env"})
    assert config.extensions[0].password == "from-env"


def test_env_default_used_when_unset_or_empty() -> None:
    text = "server:\n  server_name: ${NAME:-Fallback PBX}\n"
    assert parse_config(text, {}).server.server_name == "Fallback PBX"
    assert parse_config(text, {"NAME": ""}).server.server_name == "Fallback PBX"
    assert parse_config(text, {"NAME": "Office"}).server.server_name == "Office"


def test_env_missing_is_an_error_naming_the_key() -> None:
    message = error_of("extensions:\n- number: 1001\n  password: ${PBX_PW}\n")
    assert message == ("extensions[0].password: environment variable PBX_PW is not set "
                       "(set it or write ${PBX_PW:-default})")


def test_env_inside_text_and_literal_escape() -> None:
    config = parse_config("server:\n  server_name: PBX ${SITE:-HQ} $${x}\n", {})
    assert config.server.server_name == "PBX HQ ${x}"


def test_env_fills_numbers_booleans_and_optionals() -> None:
    text = ("server:\n  sip_port: ${PORT:-5062}\n  sip_tcp: ${TCP:-false}\n"
            "  external_ip: ${PBX_EXTERNAL_IP:-}\n")
    config = parse_config(text, {})
    assert (config.server.sip_port, config.server.sip_tcp, config.server.external_ip) == (
        5062, False, None)
    config = parse_config(text, {"PORT": "5080", "PBX_EXTERNAL_IP": "203.0.113.7"})
    assert (config.server.sip_port, config.server.external_ip) == (5080, "203.0.113.7")
    assert type(config.server.server_name) is str


def test_env_bad_number_names_key_and_value() -> None:
    assert (error_of("server:\n  sip_port: ${PORT}\n", {"PORT": "abc"})
            == 'server.sip_port: expected an integer 1-65535, got "abc"')


def test_sip_port_not_a_number_exact_message() -> None:
    assert (error_of("server:\n  sip_port: abc\n")
            == 'server.sip_port: expected an integer 1-65535, got "abc"')


VALIDATION_CASES = [
    ("server:\n  sip_port: 70000\n", "server.sip_port: expected an integer 1-65535, got 70000"),
    ("server:\n  sip_port: true\n", "server.sip_port: expected an integer 1-65535, got true"),
    ("server:\n  sip_host: localhost\n", 'server.sip_host: expected an IP address, got "localhost"'),
    ("server:\n  external_ip: 300.1.1.1\n",
     'server.external_ip: expected an IP address, got "300.1.1.1"'),
    ("server:\n  rtp_port_range_start: 10001\n",
     "server.rtp_port_range_start: expected an even integer 1-65535, got 10001"),
    ("server:\n  rtp_port_range_start: 20000\n  rtp_port_range_end: 20000\n",
     "server.rtp_port_range_end: expected an integer greater than "
     "server.rtp_port_range_start (20000), got 20000"),
    ("server:\n  sip_tcp: 1\n", "server.sip_tcp: expected true or false, got 1"),
    ("server: [1, 2]\n", "server: expected a mapping, got [1, 2]"),
    ("sip:\n  timer_t1: 0\n", "sip.timer_t1: expected a positive number, got 0"),
    ("sip:\n  timer_t4: fast\n", 'sip.timer_t4: expected a positive number, got "fast"'),
    ("sip:\n  max_message_size: -1\n",
     "sip.max_message_size: expected a positive integer, got -1"),
    ("auth:\n  algorithms: []\n", "auth.algorithms: expected a non-empty list, got []"),
    ("auth:\n  algorithms: [MD5, SHA-512]\n",
     'auth.algorithms[1]: expected "MD5" or "SHA-256", got "SHA-512"'),
    ("auth:\n  nonce_ttl: 1.5\n", "auth.nonce_ttl: expected a positive integer, got 1.5"),
    ("registrar:\n  min_expires: 120\n  default_expires: 60\n",
     "registrar.default_expires: expected an integer 120-3600 "
     "(registrar.min_expires to registrar.max_expires), got 60"),
    ("api:\n  port: 0\n", "api.port: expected an integer 1-65535, got 0"),
    ("api:\n  cors_origins: https://example.com\n",
     'api.cors_origins: expected a list, got "https://example.com"'),
    ("database:\n  type: postgresql\n",
     'database.type: expected "sqlite", got "postgresql" (postgresql is not supported yet)'),
    ("dialplan:\n  internal: '^[1-9'\n",
     'dialplan.internal: expected a valid regular expression, got "^[1-9" '
     "(unterminated character set at position 1)"),
    ("extensions:\n- number: 10a1\n  password: x\n",
     'extensions[0].number: expected a string of digits, got "10a1"'),
    ("extensions:\n- number: 1001\n", "extensions[0].password: required key missing"),
    ("extensions:\n- number: 1001\n  password: x\n- number: '1001'\n  password: y\n",
     'extensions[1].number: duplicate extension "1001" (already extensions[0].number)'),
    ("integrations:\n  timeout: -5\n",
     "integrations.timeout: expected a positive number, got -5"),
    ("integrations:\n  espocrm:\n    api_url: localhost:8000\n",
     'integrations.espocrm.api_url: expected an http(s) URL, got "localhost:8000"'),
    ("integrations:\n  zoom:\n    enabled: maybe\n",
     'integrations.zoom.enabled: expected true or false, got "maybe"'),
]


@pytest.mark.parametrize("text, expected", VALIDATION_CASES,
                         ids=[expected.split(":")[0] for _, expected in VALIDATION_CASES])
def test_validation_messages(text: str, expected: str) -> None:
    assert error_of(text) == expected


SECRET_CASES = [
    ("extensions:\n- number: 1001\n  password: ''\n", ""),
    ("extensions:\n- number: 1001\n  password: 987654\n", "987654"),
    ("extensions:\n- number: 1001\n  password: x\n  voicemail_pin: 12ab\n", "12ab"),
    ("api:\n  tokens: [good-token, 12345]\n", "12345"),
    ("api:\n  tokens: s3cr3t-token\n", "s3cr3t-token"),
    ("integrations:\n  matrix:\n    bot_password: [hunter2]\n", "hunter2"),
    ("integrations:\n  matrix:\n    access_token: 424242\n", "424242"),
    ("integrations:\n  espocrm:\n    api_key: 777777\n", "777777"),
    ("integrations:\n  jitsi:\n    app_secret: 555555\n", "555555"),
    ("integrations:\n  zoom:\n    client_secret: 333333\n", "333333"),
]


@pytest.mark.parametrize("text, secret", SECRET_CASES,
                         ids=[text.split(":")[-2].split()[-1] for text, _ in SECRET_CASES])
def test_secrets_are_hidden_in_errors(text: str, secret: str) -> None:
    message = error_of(text)
    assert message.endswith("got <hidden>")
    if secret:
        assert secret not in message


def test_secrets_are_left_out_of_repr() -> None:
    config = parse_config(
        "extensions:\n- number: 1001\n  password: topsecret\n"
        "api:\n  tokens: [tok-abc]\n", {})
    assert "topsecret" not in repr(config)
    assert "tok-abc" not in repr(config)
    assert config.extensions[0].password == "topsecret"
    assert config.api.tokens == ("tok-abc",)


def test_unknown_keys_are_warnings() -> None:
    config = parse_config(
        "server:\n  sip_port: 5070\n  foo: 1\nbar: 2\n"
        "integrations:\n  zoom:\n    colour: blue\n"
        "extensions:\n- number: 1001\n  password: x\n  fax: yes\n", {})
    assert config.server.sip_port == 5070
    assert config.warnings == (
        'unknown key "server.foo" ignored',
        'unknown key "bar" ignored',
        'unknown key "integrations.zoom.colour" ignored',
        'unknown key "extensions[0].fax" ignored',
    )


def test_extension_numbers_and_pins_are_text() -> None:
    config = parse_config(
        "extensions:\n- number: 1001\n  password: x\n  voicemail_pin: 0042\n"
        "- number: 0100\n  password: y\n", {})
    assert [e.number for e in config.extensions] == ["1001", "0100"]
    assert config.extensions[0].voicemail_pin == "0042"
    assert config.extensions[1].voicemail_pin is None


def test_algorithms_order_is_kept_and_case_normalised() -> None:
    config = parse_config("auth:\n  algorithms: [sha-256, md5]\n", {})
    assert config.auth.algorithms == ("SHA-256", "MD5")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("server:\n  sip_port: 5060\n  sip_host: [0.0.0.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:4:1: YAML syntax error: ")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"{path}: cannot read configuration: No such file or directory"


def test_top_level_must_be_a_mapping() -> None:
    assert error_of("- 1\n- 2\n") == "<config>: expected a mapping at the top level, got [1, 2]"


def test_null_lists_mean_empty() -> None:
    config = parse_config("api:\n  tokens:\n  cors_origins:\nextensions:\n", {})
    assert config.api.tokens == ()
    assert config.extensions == ()


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBX_TEST_SERVER_NAME", "From OS")
    config = parse_config("server:\n  server_name: ${PBX_TEST_SERVER_NAME}\n")
    assert config.server.server_name == "From OS"


def test_warnings_do_not_affect_equality() -> None:
    assert parse_config("foo: 1\n", {}) == Config()


# ---------------------------------------------------------------------------
# features, groups, dialplan names, auto_attendant.extension

EXT = "extensions:\n- number: 1001\n  password: x\n- number: 1002\n  password: y\n"


def test_features_defaults() -> None:
    features = parse_config("", {}).features
    assert features.no_answer_timeout == 30
    assert features.max_call_duration == 14400
    assert features.rtp_timeout == 60
    assert features.max_calls_per_extension == 0
    assert features.allow_unauthenticated == ()


def test_features_values_and_zero_switches_off() -> None:
    config = parse_config(
        "features:\n  no_answer_timeout: 15\n  max_call_duration: 0\n  rtp_timeout: 0\n"
        "  max_calls_per_extension: 2\n  allow_unauthenticated: ['^100[0-9]$', '^\\*97$']\n", {})
    assert config.features == FeaturesConfig(15, 0, 0, 2, ("^100[0-9]$", "^\\*97$"))
    assert config.warnings == ()


def test_features_env_and_unknown_key_warning() -> None:
    config = parse_config("features:\n  rtp_timeout: ${RTP:-30}\n  call_parking: {slots: 5}\n", {})
    assert config.features.rtp_timeout == 30
    assert config.warnings == ('unknown key "features.call_parking" ignored',)


def test_groups_parse_with_defaults() -> None:
    config = parse_config(
        EXT + "groups:\n- number: 2000\n  name: Sales\n  members: [1001, '1002']\n"
        "- number: '2001'\n  members: [1002]\n  strategy: HUNT\n  ring_timeout: 10\n", {})
    assert config.groups == (
        GroupConfig(number="2000", members=("1001", "1002"), name="Sales"),
        GroupConfig(number="2001", members=("1002",), strategy="hunt", ring_timeout=10),
    )
    assert config.groups[0].strategy == "ringall" and config.groups[0].ring_timeout == 20
    assert config.warnings == ()


def test_group_member_that_is_not_an_extension_is_a_warning() -> None:
    config = parse_config(EXT + "groups:\n- number: 2000\n  members: [1001, 1009]\n", {})
    assert config.groups[0].members == ("1001", "1009")
    assert config.warnings == ('groups[0].members[1]: "1009" is not a configured extension',)


NEW_VALIDATION_CASES = [
    ("features:\n  no_answer_timeout: 0\n",
     "features.no_answer_timeout: expected a positive integer, got 0"),
    ("features:\n  no_answer_timeout: '30s'\n",
     'features.no_answer_timeout: expected a positive integer, got "30s"'),
    ("features:\n  max_call_duration: -1\n",
     "features.max_call_duration: expected an integer >= 0 (0 = unlimited), got -1"),
    ("features:\n  rtp_timeout: 1.5\n",
     "features.rtp_timeout: expected an integer >= 0 (0 = off), got 1.5"),
    ("features:\n  max_calls_per_extension: true\n",
     "features.max_calls_per_extension: expected an integer >= 0 (0 = unlimited), got true"),
    ("features:\n  allow_unauthenticated: '^1001$'\n",
     'features.allow_unauthenticated: expected a list, got "^1001$"'),
    ("features:\n  allow_unauthenticated: ['^(1001']\n",
     'features.allow_unauthenticated[0]: expected a valid regular expression, got "^(1001" '
     "(missing ), unterminated subpattern at position 1)"),
    ("features: 5\n", "features: expected a mapping, got 5"),
    ("groups:\n  number: 2000\n", 'groups: expected a list, got {"number": 2000}'),
    ("groups:\n- members: [1001]\n", "groups[0].number: required key missing"),
    ("groups:\n- number: 20a0\n  members: [1001]\n",
     'groups[0].number: expected a string of digits, got "20a0"'),
    ("groups:\n- number: 2000\n", "groups[0].members: required key missing"),
    ("groups:\n- number: 2000\n  members: []\n",
     "groups[0].members: expected a non-empty list, got []"),
    ("groups:\n- number: 2000\n  members: [1001, alice]\n",
     'groups[0].members[1]: expected a string of digits, got "alice"'),
    ("groups:\n- number: 2000\n  members: [1001, '1001']\n",
     'groups[0].members[1]: duplicate member "1001" (already groups[0].members[0])'),
    ("groups:\n- number: 2000\n  members: [1001]\n  strategy: random\n",
     'groups[0].strategy: expected "ringall" or "hunt", got "random"'),
    ("groups:\n- number: 2000\n  members: [1001]\n  ring_timeout: 0\n",
     "groups[0].ring_timeout: expected a positive integer, got 0"),
    ("groups:\n- number: 2000\n  members: [1001]\n  name: [x]\n",
     'groups[0].name: expected a string, got ["x"]'),
    ("groups:\n- number: 2000\n  members: [1001]\n- number: 2000\n  members: [1002]\n",
     'groups[1].number: duplicate group "2000" (already groups[0].number)'),
    (EXT + "groups:\n- number: 1002\n  members: [1001]\n",
     'groups[0].number: group "1002" clashes with extension "1002" (extensions[1].number)'),
    ("dialplan:\n  voicemail: '^\\*9(7$'\n",
     'dialplan.voicemail: expected a valid regular expression, got "^\\\\*9(7$" '
     "(missing ), unterminated subpattern at position 4)"),
    ("dialplan:\n  attendant: 0\n",
     "dialplan.attendant: expected a regular expression string, got 0"),
    ("auto_attendant:\n  extension: 12ab\n",
     'auto_attendant.extension: expected a string of digits, * and #, got "12ab"'),
    (EXT + "auto_attendant:\n  extension: 1001\n",
     'auto_attendant.extension: "1001" clashes with extension "1001" (extensions[0].number)'),
    ("groups:\n- number: 2000\n  members: [1001]\nauto_attendant:\n  extension: '2000'\n",
     'auto_attendant.extension: "2000" clashes with group "2000" (groups[0].number)'),
]


@pytest.mark.parametrize("text, expected", NEW_VALIDATION_CASES,
                         ids=[expected.split(":")[0] for _, expected in NEW_VALIDATION_CASES])
def test_new_section_validation_messages(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_dialplan_keeps_user_patterns_and_recognised_names() -> None:
    config = parse_config(
        "dialplan:\n  internal: '^[1-9][0-9]{2}$'\n  voicemail: '^\\*97$'\n"
        "  attendant: '^0$'\n  trunk: '^9[0-9]+$'\n", {})
    assert config.dialplan == {"internal": "^[1-9][0-9]{2}$", "voicemail": "^\\*97$",
                               "attendant": "^0$", "trunk": "^9[0-9]+$"}
    assert config.warnings == ()


def test_auto_attendant_extension_accepts_digits_star_and_hash() -> None:
    assert parse_config("auto_attendant:\n  extension: '*0#'\n", {}).auto_attendant.extension == "*0#"
    assert parse_config("auto_attendant:\n  extension: 8000\n", {}).auto_attendant.extension == "8000"
    assert parse_config("auto_attendant:\n  extension: 0800\n", {}).auto_attendant.extension == "0800"
    assert parse_config("auto_attendant:\n  extension: ${AA:-}\n", {}).auto_attendant.extension is None


def test_shipped_config_features_and_dialplan() -> None:
    config = load_config(str(ROOT / "config.yml"), environ={})
    assert config.features == FeaturesConfig()
    assert "voicemail" in config.dialplan


# ---------------------------------------------------------------------------
# voicemail, auto_attendant, music_on_hold


def test_voicemail_attendant_and_hold_defaults() -> None:
    config = parse_config("voicemail:\nauto_attendant:\nmusic_on_hold:\n", {})
    vm = config.voicemail
    assert vm == VoicemailConfig()
    assert (vm.enabled, vm.storage_path, vm.prompts_directory) == (True, "voicemail", None)
    assert (vm.no_answer_timeout, vm.max_message_duration, vm.min_message_duration) == (20, 180, 1.0)
    assert (vm.silence_timeout, vm.max_greeting_duration, vm.pin_attempts) == (5, 60, 3)
    aa = config.auto_attendant
    assert aa == AutoAttendantConfig()
    assert (aa.extension, aa.greeting, aa.menu_options) == (None, "aa-welcome", {})
    assert (aa.timeout, aa.max_retries, aa.operator_extension, aa.dial_by_extension) == (5, 3, None, True)
    assert config.music_on_hold == MusicOnHoldConfig()
    assert (config.music_on_hold.enabled, config.music_on_hold.directory) == (True, None)
    assert config.warnings == ()


def test_menu_options_default_is_not_shared() -> None:
    first, second = AutoAttendantConfig(), AutoAttendantConfig()
    first.menu_options["1"] = "1001"
    assert second.menu_options == {}


def test_voicemail_values() -> None:
    config = parse_config(
        "voicemail:\n  enabled: false\n  storage_path: /var/spool/pbx/vm\n  no_answer_timeout: 12\n"
        "  max_message_duration: 300\n  min_message_duration: 0\n  silence_timeout: 0\n"
        "  max_greeting_duration: 30\n  pin_attempts: 5\n  prompts_directory: ${PROMPTS:-custom}\n", {})
    assert config.voicemail == VoicemailConfig(False, "/var/spool/pbx/vm", 12, 300, 0.0, 0, 30, 5, "custom")
    assert isinstance(config.voicemail.min_message_duration, float)
    assert parse_config("voicemail:\n  min_message_duration: 2.5\n", {}).voicemail.min_message_duration == 2.5
    assert parse_config("voicemail:\n  min_message_duration: ${MIN}\n", {"MIN": "0.5"}
                        ).voicemail.min_message_duration == 0.5
    assert config.warnings == ()


def test_auto_attendant_values() -> None:
    config = parse_config(
        EXT + "groups:\n- number: 2000\n  members: [1001]\n"
        "auto_attendant:\n  extension: 8000\n  greeting: /srv/prompts/welcome.wav\n"
        "  menu_options:\n    1: 2000\n    2: '1002'\n    0: 1001\n    '*': '*97'\n    '#': '8000'\n"
        "  timeout: 8\n  max_retries: 0\n  operator_extension: 1001\n  dial_by_extension: false\n", {})
    assert config.auto_attendant == AutoAttendantConfig(
        extension="8000", greeting="/srv/prompts/welcome.wav",
        menu_options={"1": "2000", "2": "1002", "0": "1001", "*": "*97", "#": "8000"},
        timeout=8, max_retries=0, operator_extension="1001", dial_by_extension=False)
    assert config.warnings == ()


def test_music_on_hold_values() -> None:
    config = parse_config("music_on_hold:\n  enabled: ${MOH:-no}\n  directory: moh\n", {})
    assert config.music_on_hold == MusicOnHoldConfig(enabled=False, directory="moh")


def test_unknown_keys_in_the_new_sections_are_warnings() -> None:
    config = parse_config("voicemail:\n  max_seconds: 120\nmusic_on_hold:\n  volume: 3\n", {})
    assert config.voicemail == VoicemailConfig()
    assert config.warnings == ('unknown key "voicemail.max_seconds" ignored',
                               'unknown key "music_on_hold.volume" ignored')


APP_VALIDATION_CASES = [
    ("voicemail: [1]\n", "voicemail: expected a mapping, got [1]"),
    ("voicemail:\n  enabled: sometimes\n", 'voicemail.enabled: expected true or false, got "sometimes"'),
    ("voicemail:\n  storage_path: ''\n", 'voicemail.storage_path: expected a non-empty string, got ""'),
    ("voicemail:\n  storage_path: 5\n", "voicemail.storage_path: expected a non-empty string, got 5"),
    ("voicemail:\n  no_answer_timeout: 0\n",
     "voicemail.no_answer_timeout: expected a positive integer, got 0"),
    ("voicemail:\n  max_message_duration: -1\n",
     "voicemail.max_message_duration: expected a positive integer, got -1"),
    ("voicemail:\n  max_message_duration: 2.5\n",
     "voicemail.max_message_duration: expected a positive integer, got 2.5"),
    ("voicemail:\n  min_message_duration: -0.5\n",
     "voicemail.min_message_duration: expected a number >= 0, got -0.5"),
    ("voicemail:\n  min_message_duration: .nan\n",
     "voicemail.min_message_duration: expected a number >= 0, got NaN"),
    ("voicemail:\n  min_message_duration: true\n",
     "voicemail.min_message_duration: expected a number >= 0, got true"),
    ("voicemail:\n  min_message_duration: 10\n  max_message_duration: 10\n",
     "voicemail.min_message_duration: expected a number below voicemail.max_message_duration (10), got 10.0"),
    ("voicemail:\n  silence_timeout: -1\n",
     "voicemail.silence_timeout: expected an integer >= 0 (0 = off), got -1"),
    ("voicemail:\n  max_greeting_duration: 0\n",
     "voicemail.max_greeting_duration: expected a positive integer, got 0"),
    ("voicemail:\n  pin_attempts: 0\n", "voicemail.pin_attempts: expected a positive integer, got 0"),
    ("voicemail:\n  prompts_directory: [a]\n",
     'voicemail.prompts_directory: expected a non-empty string, got ["a"]'),
    ("auto_attendant: yes\n", "auto_attendant: expected a mapping, got true"),
    ("auto_attendant:\n  extension: -5\n",
     "auto_attendant.extension: expected a string of digits, * and #, got -5"),
    ("auto_attendant:\n  greeting: ''\n", 'auto_attendant.greeting: expected a non-empty string, got ""'),
    ("auto_attendant:\n  menu_options: [1001]\n",
     "auto_attendant.menu_options: expected a mapping, got [1001]"),
    ("auto_attendant:\n  menu_options:\n    x: 1001\n",
     'auto_attendant.menu_options["x"]: expected a single key 0-9, * or #, got "x"'),
    ("auto_attendant:\n  menu_options:\n    10: 1001\n",
     'auto_attendant.menu_options["10"]: expected a single key 0-9, * or #, got 10'),
    ("auto_attendant:\n  menu_options:\n    '**': 1001\n",
     'auto_attendant.menu_options["**"]: expected a single key 0-9, * or #, got "**"'),
    ("auto_attendant:\n  menu_options:\n    true: 1001\n",
     'auto_attendant.menu_options["True"]: expected a single key 0-9, * or #, got true'),
    ("auto_attendant:\n  menu_options:\n    1: sales\n",
     'auto_attendant.menu_options["1"]: expected a string of digits, * and #, got "sales"'),
    ("auto_attendant:\n  menu_options:\n    1:\n",
     'auto_attendant.menu_options["1"]: expected a string of digits, * and #, got null'),
    ("auto_attendant:\n  menu_options:\n    1: 1001\n    '1': 1002\n",
     'auto_attendant.menu_options["1"]: duplicate key "1" (already written as 1)'),
    ("auto_attendant:\n  timeout: 0\n", "auto_attendant.timeout: expected a positive integer, got 0"),
    ("auto_attendant:\n  max_retries: -1\n", "auto_attendant.max_retries: expected an integer >= 0, got -1"),
    ("auto_attendant:\n  operator_extension: reception\n",
     'auto_attendant.operator_extension: expected a string of digits, * and #, got "reception"'),
    ("auto_attendant:\n  dial_by_extension: 1\n",
     "auto_attendant.dial_by_extension: expected true or false, got 1"),
    ("music_on_hold:\n  enabled: 'maybe'\n", 'music_on_hold.enabled: expected true or false, got "maybe"'),
    ("music_on_hold:\n  directory: 7\n", "music_on_hold.directory: expected a non-empty string, got 7"),
]


@pytest.mark.parametrize("text, expected", APP_VALIDATION_CASES,
                         ids=[f"{i}-{expected.split(':')[0]}" for i, (_, expected) in enumerate(APP_VALIDATION_CASES)])
def test_app_section_validation_messages(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_shipped_config_app_sections() -> None:
    config = load_config(str(ROOT / "config.yml"), environ={})
    assert config.voicemail == VoicemailConfig()
    assert config.music_on_hold == MusicOnHoldConfig()
    assert config.auto_attendant.greeting == "aa-welcome"
    assert config.auto_attendant.extension is not None
    assert config.auto_attendant.extension not in {e.number for e in config.extensions}
    assert all(target in {e.number for e in config.extensions}
               for target in config.auto_attendant.menu_options.values())


def test_shipped_prompts_exist_for_the_defaults() -> None:
    assert (ROOT / "prompts" / f"{AutoAttendantConfig().greeting}.wav").is_file()
    assert (ROOT / "prompts" / "moh.wav").is_file()
