"""The PBX configuration: one YAML file, read once, checked before use.

Pure: no reactor, no sockets, nothing written.  ``load_config`` reads the
file, ``parse_config`` does the rest so tests can feed text directly.

Every section is a frozen dataclass whose attribute names mirror the YAML
keys.  Each field carries its own check in its metadata (see ``_field``), so
validation is one generic walk over those specs instead of a hand-written
``if`` per key.  A bad value stops start-up with a ``ConfigError`` whose
text is one line naming the dotted key, e.g.::

    server.sip_port: expected an integer 1-65535, got "abc"

Unknown keys never stop start-up (an old file must keep working after an
upgrade); they are listed in ``Config.warnings`` instead.  Values of secret
keys (passwords, tokens, API keys) are shown as ``<hidden>`` in errors and
left out of ``repr()`` so they do not end up in logs.

String values may use ``${VAR}`` or ``${VAR:-default}`` to take a value from
the environment (``$${`` writes a literal ``${``).  A value that comes
entirely from the environment may also fill a number or boolean key, e.g.
``sip_port: ${PBX_SIP_PORT:-5060}``.

YAML integers written with a leading zero (``0100``) are kept as text: YAML
1.1 would read them as octal, which silently turns extension ``0100`` into
``64``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "AUTH_ALGORITHMS",
    "ApiConfig",
    "AuthConfig",
    "AutoAttendantConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "EspoCRMConfig",
    "ExtensionConfig",
    "FeaturesConfig",
    "GROUP_STRATEGIES",
    "GroupConfig",
    "IntegrationsConfig",
    "JitsiConfig",
    "MatrixConfig",
    "MENU_KEYS",
    "MusicOnHoldConfig",
    "RegistrarConfig",
    "ServerConfig",
    "SipConfig",
    "VoicemailConfig",
    "ZoomConfig",
    "load_config",
    "parse_config",
]

AUTH_ALGORITHMS = ("MD5", "SHA-256")
GROUP_STRATEGIES = ("ringall", "hunt")
#: The keys of a phone keypad an attendant menu option may be bound to.
MENU_KEYS = "0123456789*#"
HIDDEN = "<hidden>"


class ConfigError(ValueError):
    """A configuration that cannot be used; ``str()`` is one line for humans."""


# ---------------------------------------------------------------------------
# Field checks.  Each takes the YAML value and returns the typed value, or
# raises _Invalid with the "expected ..." phrase of the error message.


class _Invalid(Exception):
    def __init__(self, expected: str, detail: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.detail = detail


class _EnvStr(str):
    """A string that came entirely from ``${...}``: numbers may parse it."""


_Check = Callable[[Any], Any]


def _is_int(value: object) -> bool:
    # bool is a subclass of int; "sip_tcp: yes" must never pass as a port.
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(low: int | None = None, high: int | None = None, *, even: bool = False) -> _Check:
    if low is not None and high is not None:
        expected = f"an integer {low}-{high}"
    elif low == 1:
        expected = "a positive integer"
    elif low is not None:
        expected = f"an integer >= {low}"
    else:
        expected = "an integer"
    if even:
        expected = expected.replace("an integer", "an even integer")

    def check(value: Any) -> int:
        if isinstance(value, _EnvStr) and re.fullmatch(r"[-+]?[0-9]+", value):
            value = int(value)
        if not _is_int(value):
            raise _Invalid(expected)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Invalid(expected)
        if even and value % 2:
            raise _Invalid(expected)
        return value

    return check


_port = _integer(1, 65535)
_positive_int = _integer(1)


def _finite(value: Any, expected: str) -> float:
    if isinstance(value, _EnvStr):
        try:
            value = float(value)
        except ValueError:
            pass
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
        raise _Invalid(expected)
    return float(value)


def _positive_float(value: Any) -> float:
    number = _finite(value, "a positive number")
    if not number > 0:
        raise _Invalid("a positive number")
    return number


def _non_negative_float(value: Any) -> float:
    number = _finite(value, "a number >= 0")
    if number < 0:
        raise _Invalid("a number >= 0")
    return number


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}


def _boolean(value: Any) -> bool:
    if isinstance(value, _EnvStr) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _text(value: Any) -> str:
    """Any string, even empty."""
    if not isinstance(value, str):
        raise _Invalid("a string")
    return str(value)


def _non_empty(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("a non-empty string")
    return str(value)


def _digits(value: Any) -> str:
    # Unquoted 1001 in YAML is an int; extension numbers and PINs are text.
    if _is_int(value) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise _Invalid("a string of digits")
    return str(value)


def _dialstring(value: Any) -> str:
    """A number as dialled on a keypad: digits, * and # (unquoted 8000 is an int)."""
    if _is_int(value) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(r"[0-9*#]+", value):
        raise _Invalid("a string of digits, * and #")
    return str(value)


def _menu_key(value: Any) -> str:
    """One keypad key; YAML reads an unquoted ``1:`` as the integer 1."""
    if _is_int(value) and 0 <= value <= 9:
        value = str(value)
    if not isinstance(value, str) or len(value) != 1 or value not in MENU_KEYS:
        raise _Invalid("a single key 0-9, * or #")
    return str(value)


def _ip(value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise _Invalid("an IP address")


def _url(value: Any) -> str:
    if isinstance(value, str):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = None
        if parts is not None and parts.scheme in ("http", "https") and parts.hostname:
            return str(value)
    raise _Invalid("an http(s) URL")


def _regex(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("a regular expression string")
    try:
        re.compile(value)
    except re.error as e:
        raise _Invalid("a valid regular expression", str(e)) from None
    return str(value)


def _algorithm(value: Any) -> str:
    if isinstance(value, str):
        for name in AUTH_ALGORITHMS:
            if value.upper() == name:
                return name
    raise _Invalid(" or ".join(f'"{name}"' for name in AUTH_ALGORITHMS))


def _database_type(value: Any) -> str:
    if value == "sqlite":
        return "sqlite"
    if isinstance(value, str) and value.lower() in ("postgresql", "postgres", "mysql"):
        raise _Invalid('"sqlite"', f"{value} is not supported yet")
    raise _Invalid('"sqlite"')


def _zero_means(meaning: str) -> _Check:
    """A non-negative integer where 0 switches the limit off."""
    expected = f"an integer >= 0 (0 = {meaning})"
    base = _integer(0)

    def check(value: Any) -> int:
        try:
            return base(value)
        except _Invalid:
            raise _Invalid(expected) from None

    return check


def _strategy(value: Any) -> str:
    if isinstance(value, str) and value.lower() in GROUP_STRATEGIES:
        return value.lower()
    raise _Invalid(" or ".join(f'"{name}"' for name in GROUP_STRATEGIES))


def _optional(check: _Check) -> _Check:
    """None, or an empty string (``${VAR:-}``), means "not set"."""

    def optional(value: Any) -> Any:
        if value is None or value == "":
            return None
        return check(value)

    return optional


@dataclass(frozen=True)
class _ListOf:
    """A YAML list, each item checked; null means an empty list."""

    item: Any
    non_empty: bool = False


@dataclass(frozen=True)
class _MapOf:
    """A YAML mapping with free names, each value checked.

    With a ``key`` check the names are data (keypad keys, say) rather than
    names: they are checked too and errors name an item as ``path["k"]``.
    """

    value: Any
    key: Any = None


def _field(check: Any, default: Any = MISSING, *, secret: bool = False) -> Any:
    """One spec row: how to check the key, its default, whether to hide it."""
    metadata = {"check": check, "secret": secret}
    if isinstance(default, (dict, list)):
        frozen_default = default
        return field(default_factory=lambda: type(frozen_default)(frozen_default),
                     repr=not secret, metadata=metadata)
    if isinstance(check, type) and default is MISSING:
        return field(default_factory=check, repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


# ---------------------------------------------------------------------------
# The spec tables: one dataclass per section.


@dataclass(frozen=True)
class ServerConfig:
    """Where the PBX listens for SIP and relays RTP."""

    sip_host: str = _field(_ip, "0.0.0.0")
    sip_port: int = _field(_port, 5060)
    external_ip: str | None = _field(_optional(_ip), None)
    rtp_port_range_start: int = _field(_integer(1, 65535, even=True), 10000)
    rtp_port_range_end: int = _field(_port, 20000)
    server_name: str = _field(_non_empty, "Twisted PBX")
    sip_tcp: bool = _field(_boolean, True)

    def __post_init__(self) -> None:
        if self.rtp_port_range_end <= self.rtp_port_range_start:
            raise ConfigError(
                "server.rtp_port_range_end: expected an integer greater than "
                f"server.rtp_port_range_start ({self.rtp_port_range_start}), "
                f"got {self.rtp_port_range_end}"
            )


@dataclass(frozen=True)
class SipConfig:
    """Transaction timers (RFC 3261 §17) and the TCP framing limit."""

    timer_t1: float = _field(_positive_float, 0.5)
    timer_t2: float = _field(_positive_float, 4.0)
    timer_t4: float = _field(_positive_float, 5.0)
    max_message_size: int = _field(_positive_int, 65535)
    force_rport: bool = _field(_boolean, True)

    def __post_init__(self) -> None:
        if self.timer_t2 < self.timer_t1:
            raise ConfigError(
                f"sip.timer_t2: expected a number >= sip.timer_t1 ({self.timer_t1}), "
                f"got {self.timer_t2}"
            )


@dataclass(frozen=True)
class AuthConfig:
    """Digest challenges.  MD5 first: SIPp <= 3.6.1 and older phones only
    answer the first challenge they see."""

    realm: str = _field(_non_empty, "pbx")
    algorithms: tuple[str, ...] = _field(_ListOf(_algorithm, non_empty=True), ("MD5",))
    nonce_ttl: int = _field(_positive_int, 300)


@dataclass(frozen=True)
class RegistrarConfig:
    """Bounds on REGISTER expiry, in seconds."""

    min_expires: int = _field(_positive_int, 60)
    max_expires: int = _field(_positive_int, 3600)
    default_expires: int = _field(_positive_int, 3600)

    def __post_init__(self) -> None:
        if self.max_expires < self.min_expires:
            raise ConfigError(
                f"registrar.max_expires: expected an integer >= registrar.min_expires "
                f"({self.min_expires}), got {self.max_expires}"
            )
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ConfigError(
                f"registrar.default_expires: expected an integer "
                f"{self.min_expires}-{self.max_expires} (registrar.min_expires to "
                f"registrar.max_expires), got {self.default_expires}"
            )


@dataclass(frozen=True)
class ApiConfig:
    """The REST API listener and who may use it."""

    host: str = _field(_ip, "127.0.0.1")
    port: int = _field(_port, 8080)
    tokens: tuple[str, ...] = _field(_ListOf(_non_empty), (), secret=True)
    cors_origins: tuple[str, ...] = _field(_ListOf(_non_empty), ())


@dataclass(frozen=True)
class DatabaseConfig:
    """Where registrations, CDRs and voicemail metadata are stored."""

    type: str = _field(_database_type, "sqlite")
    path: str = _field(_non_empty, "pbx.db")


@dataclass(frozen=True)
class ExtensionConfig:
    """One phone account."""

    number: str = _field(_digits)
    password: str = _field(_non_empty, secret=True)
    name: str | None = _field(_optional(_text), None)
    voicemail_pin: str | None = _field(_optional(_digits), None, secret=True)
    email: str | None = _field(_optional(_non_empty), None)


@dataclass(frozen=True)
class FeaturesConfig:
    """Call limits.  ``allow_unauthenticated`` is empty by default so that
    nobody reaches anything without a password: the PBX is no open relay."""

    no_answer_timeout: int = _field(_positive_int, 30)
    max_call_duration: int = _field(_zero_means("unlimited"), 14400)
    rtp_timeout: int = _field(_zero_means("off"), 60)
    max_calls_per_extension: int = _field(_zero_means("unlimited"), 0)
    allow_unauthenticated: tuple[str, ...] = _field(_ListOf(_regex), ())


@dataclass(frozen=True)
class GroupConfig:
    """A ring group: one number that rings several extensions.

    ``ringall`` rings every member at once for ``ring_timeout`` seconds;
    ``hunt`` rings them one after the other, ``ring_timeout`` seconds each.
    """

    number: str = _field(_digits)
    members: tuple[str, ...] = _field(_ListOf(_digits, non_empty=True))
    name: str | None = _field(_optional(_text), None)
    strategy: str = _field(_strategy, "ringall")
    ring_timeout: int = _field(_positive_int, 20)


@dataclass(frozen=True)
class JitsiConfig:
    """Video meetings: links (and JWTs when self-hosted) for calls."""

    enabled: bool = _field(_boolean, False)
    server_url: str = _field(_url, "https://meet.jit.si")
    app_id: str | None = _field(_optional(_non_empty), None)
    app_secret: str | None = _field(_optional(_non_empty), None, secret=True)
    token_ttl: int = _field(_positive_int, 3600)


@dataclass(frozen=True)
class MatrixConfig:
    """Chat notices (missed calls, voicemail) posted by a bot."""

    enabled: bool = _field(_boolean, False)
    homeserver_url: str = _field(_url, "http://localhost:8008")
    bot_username: str | None = _field(_optional(_non_empty), None)
    bot_password: str | None = _field(_optional(_non_empty), None, secret=True)
    access_token: str | None = _field(_optional(_non_empty), None, secret=True)
    notification_room: str | None = _field(_optional(_non_empty), None)
    voicemail_room: str | None = _field(_optional(_non_empty), None)
    missed_call_notifications: bool = _field(_boolean, True)


@dataclass(frozen=True)
class EspoCRMConfig:
    """CRM lookups and call logging."""

    enabled: bool = _field(_boolean, False)
    api_url: str = _field(_url, "http://localhost:8000/api/v1")
    api_key: str | None = _field(_optional(_non_empty), None, secret=True)
    auto_create_contacts: bool = _field(_boolean, False)
    auto_log_calls: bool = _field(_boolean, True)
    screen_pop: bool = _field(_boolean, True)


@dataclass(frozen=True)
class ZoomConfig:
    """Zoom meetings via server-to-server OAuth."""

    enabled: bool = _field(_boolean, False)
    account_id: str | None = _field(_optional(_non_empty), None)
    client_id: str | None = _field(_optional(_non_empty), None)
    client_secret: str | None = _field(_optional(_non_empty), None, secret=True)
    api_base_url: str = _field(_url, "https://api.zoom.us/v2")
    oauth_url: str = _field(_url, "https://zoom.us/oauth/token")
    user: str = _field(_non_empty, "me")


@dataclass(frozen=True)
class IntegrationsConfig:
    """Outgoing HTTP services; all off unless enabled."""

    timeout: float = _field(_positive_float, 5.0)
    jitsi: JitsiConfig = _field(JitsiConfig)
    matrix: MatrixConfig = _field(MatrixConfig)
    espocrm: EspoCRMConfig = _field(EspoCRMConfig)
    zoom: ZoomConfig = _field(ZoomConfig)


@dataclass(frozen=True)
class VoicemailConfig:
    """Voicemail: where recordings go and how long the PBX waits and records.

    Recordings are WAV files under ``storage_path`` (relative to the working
    directory), their metadata in the database; one shorter than
    ``min_message_duration`` is a caller who hung up at the beep and is
    dropped.  ``prompts_directory`` overrides single shipped prompts by file
    name; prompts it lacks come from the project's own ``prompts``.
    """

    enabled: bool = _field(_boolean, True)
    storage_path: str = _field(_non_empty, "voicemail")
    no_answer_timeout: int = _field(_positive_int, 20)
    max_message_duration: int = _field(_positive_int, 180)
    min_message_duration: float = _field(_non_negative_float, 1.0)
    silence_timeout: int = _field(_zero_means("off"), 5)
    max_greeting_duration: int = _field(_positive_int, 60)
    pin_attempts: int = _field(_positive_int, 3)
    prompts_directory: str | None = _field(_optional(_non_empty), None)

    def __post_init__(self) -> None:
        if self.min_message_duration >= self.max_message_duration:
            raise ConfigError(
                "voicemail.min_message_duration: expected a number below "
                f"voicemail.max_message_duration ({self.max_message_duration}), "
                f"got {_show(self.min_message_duration, False)}"
            )


@dataclass(frozen=True)
class AutoAttendantConfig:
    """The menu callers reach on ``extension``: one key connects a number.

    After ``timeout`` seconds without a key, or an invalid one, the menu is
    repeated up to ``max_retries`` times; then the caller goes to
    ``operator_extension``, or hears goodbye when there is none.
    """

    extension: str | None = _field(_optional(_dialstring), None)
    greeting: str = _field(_non_empty, "aa-welcome")
    menu_options: dict[str, str] = _field(_MapOf(_dialstring, key=_menu_key), {})
    timeout: int = _field(_positive_int, 5)
    max_retries: int = _field(_integer(0), 3)
    operator_extension: str | None = _field(_optional(_dialstring), None)
    dial_by_extension: bool = _field(_boolean, True)


@dataclass(frozen=True)
class MusicOnHoldConfig:
    """What a held caller hears: the shipped ``prompts/moh.wav``, or every
    ``*.wav`` in ``directory`` in name order, looped."""

    enabled: bool = _field(_boolean, True)
    directory: str | None = _field(_optional(_non_empty), None)


@dataclass(frozen=True)
class Config:
    """The whole file.  ``warnings`` lists what was ignored, for the log."""

    server: ServerConfig = _field(ServerConfig)
    sip: SipConfig = _field(SipConfig)
    auth: AuthConfig = _field(AuthConfig)
    registrar: RegistrarConfig = _field(RegistrarConfig)
    api: ApiConfig = _field(ApiConfig)
    database: DatabaseConfig = _field(DatabaseConfig)
    dialplan: dict[str, str] = _field(_MapOf(_regex), {"internal": "^[1-9][0-9]{3}$"})
    extensions: tuple[ExtensionConfig, ...] = _field(_ListOf(ExtensionConfig), ())
    features: FeaturesConfig = _field(FeaturesConfig)
    voicemail: VoicemailConfig = _field(VoicemailConfig)
    auto_attendant: AutoAttendantConfig = _field(AutoAttendantConfig)
    music_on_hold: MusicOnHoldConfig = _field(MusicOnHoldConfig)
    groups: tuple[GroupConfig, ...] = _field(_ListOf(GroupConfig), ())
    integrations: IntegrationsConfig = _field(IntegrationsConfig)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for index, extension in enumerate(self.extensions):
            first = seen.setdefault(extension.number, index)
            if first != index:
                raise ConfigError(
                    f'extensions[{index}].number: duplicate extension "{extension.number}" '
                    f"(already extensions[{first}].number)"
                )
        groups: dict[str, int] = {}
        for index, group in enumerate(self.groups):
            key = f"groups[{index}].number"
            if group.number in seen:
                raise ConfigError(
                    f'{key}: group "{group.number}" clashes with extension '
                    f'"{group.number}" (extensions[{seen[group.number]}].number)'
                )
            first = groups.setdefault(group.number, index)
            if first != index:
                raise ConfigError(
                    f'{key}: duplicate group "{group.number}" (already groups[{first}].number)'
                )
            members: dict[str, int] = {}
            for position, member in enumerate(group.members):
                earlier = members.setdefault(member, position)
                if earlier != position:
                    raise ConfigError(
                        f'groups[{index}].members[{position}]: duplicate member "{member}" '
                        f"(already groups[{index}].members[{earlier}])"
                    )
        text = self.auto_attendant.extension
        if text is not None:
            key = "auto_attendant.extension"
            if text in seen:
                raise ConfigError(
                    f'{key}: "{text}" clashes with extension "{text}" (extensions[{seen[text]}].number)'
                )
            if text in groups:
                raise ConfigError(f'{key}: "{text}" clashes with group "{text}" (groups[{groups[text]}].number)')

    def cross_warnings(self) -> tuple[str, ...]:
        """Doubtful but legal combinations: group members that are not
        configured extensions (they may still be created through the API)."""
        numbers = {extension.number for extension in self.extensions}
        return tuple(
            f'groups[{index}].members[{position}]: "{member}" is not a configured extension'
            for index, group in enumerate(self.groups)
            for position, member in enumerate(group.members)
            if member not in numbers
        )


# ---------------------------------------------------------------------------
# The generic walk.


def _show(value: Any, secret: bool) -> str:
    """A value as it would read in YAML, on one short line."""
    if secret:
        return HIDDEN
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _quote(path: str) -> str:
    return json.dumps(path, ensure_ascii=False)


_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _expand(value: Any, path: str, environ: Mapping[str, str]) -> Any:
    """Substitute ``${VAR}`` / ``${VAR:-default}`` in every string of value.

    A string that is one whole reference comes back as an _EnvStr so that
    number and boolean checks may parse it.
    """
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}", environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None:
            raise ConfigError(f"{path}: invalid ${{...}} reference (write $${{ for a literal ${{)")
        found = environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        if found is not None:  # set but empty, no default: keep it empty
            return found
        raise ConfigError(
            f"{path}: environment variable {name} is not set "
            f"(set it or write ${{{name}:-default}})"
        )

    expanded = _REFERENCE.sub(replace, value)
    whole = _REFERENCE.fullmatch(value)
    if whole is not None and whole.group(1) is not None:
        return _EnvStr(expanded)
    return expanded


class _Walk:
    """State of one parse: the environment and the warnings collected."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.warnings: list[str] = []

    def section(self, cls: type, raw: Any, path: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'top level'}: expected a mapping, got {_show(raw, False)}")
        specs = {f.name: f for f in fields(cls) if "check" in f.metadata}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key)
            key_path = f"{path}.{name}" if path else name
            spec = specs.get(name)
            if spec is None:
                self.warnings.append(f"unknown key {_quote(key_path)} ignored")
                continue
            values[name] = self.value(spec.metadata["check"], value, key_path,
                                      spec.metadata["secret"])
        for name, spec in specs.items():
            if name not in values and spec.default is MISSING and spec.default_factory is MISSING:
                key_path = f"{path}.{name}" if path else name
                raise ConfigError(f"{key_path}: required key missing")
        return cls(**values)

    def value(self, check: Any, raw: Any, path: str, secret: bool) -> Any:
        if isinstance(check, type) and is_dataclass(check):
            return self.section(check, raw, path)
        if isinstance(check, _ListOf):
            return self.list_of(check, raw, path, secret)
        if isinstance(check, _MapOf):
            return self.map_of(check, raw, path, secret)
        return self.checked(check, _expand(raw, path, self.environ), path, secret)

    @staticmethod
    def checked(check: _Check, raw: Any, path: str, secret: bool) -> Any:
        try:
            return check(raw)
        except _Invalid as e:
            detail = f" ({e.detail})" if e.detail else ""
            raise ConfigError(f"{path}: expected {e.expected}, got {_show(raw, secret)}{detail}") from None

    def list_of(self, spec: _ListOf, raw: Any, path: str, secret: bool) -> tuple[Any, ...]:
        if raw is None:
            raw = []
        if not isinstance(raw, list) or (spec.non_empty and not raw):
            expected = "a non-empty list" if spec.non_empty else "a list"
            raise ConfigError(f"{path}: expected {expected}, got {_show(raw, secret)}")
        return tuple(self.value(spec.item, item, f"{path}[{i}]", secret)
                     for i, item in enumerate(raw))

    def map_of(self, spec: _MapOf, raw: Any, path: str, secret: bool) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_show(raw, secret)}")
        if spec.key is None:
            return {str(k): self.value(spec.value, v, f"{path}.{k}", secret) for k, v in raw.items()}
        result: dict[str, Any] = {}
        written: dict[str, Any] = {}
        for k, v in raw.items():
            item_path = f"{path}[{_quote(str(k))}]"
            name = self.checked(spec.key, _expand(k, item_path, self.environ), item_path, False)
            if name in written:
                raise ConfigError(f"{item_path}: duplicate key {_show(k, False)} "
                                  f"(already written as {_show(written[name], False)})")
            written[name] = k
            result[name] = self.value(spec.value, v, item_path, secret)
        return result


# ---------------------------------------------------------------------------
# YAML in.


class _Loader(yaml.SafeLoader):
    """safe_load, except that 0100 stays "0100" instead of octal 64."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    if isinstance(text, str) and re.fullmatch(r"[-+]?0[0-9_]+", text):
        return text
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_config(text: str, environ: Mapping[str, str] | None = None,
                 *, source: str = "<config>") -> Config:
    """Check YAML text and build a Config; ``source`` names it in errors."""
    if environ is None:
        environ = os.environ
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        problem = " ".join(str(problem).split())
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_show(raw, False)}")
    walk = _Walk(environ)
    config = walk.section(Config, raw, "")
    return replace(config, warnings=tuple(walk.warnings) + config.cross_warnings())


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration file; the file is never written."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_config(text, environ, source=path)
