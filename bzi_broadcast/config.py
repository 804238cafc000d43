"""Settings: a TOML file, overridden by ``BZI_<SECTION>_<KEY>`` environment variables.

Every secret may also come from a file named by ``BZI_<SECTION>_<KEY>_FILE`` (Docker secrets).
Every problem is reported at once, naming the setting; secrets never appear in reprs or logs.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from bzi_broadcast.errors import ConfigError
from bzi_broadcast.files import FileRefused, read_capped
from bzi_broadcast.i18n import gettext as _


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Organisation(_Section):
    """Who publishes: shown in every email footer, the web archive and the Atom feed."""

    name: str = "Bundeszuwanderungs- und Integrationsrat (BZI)"
    short_name: str = "BZI"
    website: str = "https://bzi.example.org"
    impressum: str = (
        "Bundeszuwanderungs- und Integrationsrat (BZI)\n"
        "Musterstraße 1, 10115 Berlin\n"
        "kontakt@bzi.example.org"
    )
    privacy_url: str | None = None
    accent_color: str = Field(default="#00576b", pattern=r"^#[0-9a-fA-F]{6}$")
    feed_domain: str = "bzi.example.org"


# sqlite:///file, postgresql://… or postgres://…, with or without a driver (+asyncpg); checked
# without SQLAlchemy so that reading the settings stays light (``status``).
_DATABASE_URL = re.compile(r"(sqlite|postgresql|postgres)(\+\w+)?://")


class DatabaseSettings(_Section):
    url: str = "sqlite:///data/bzi-broadcast.sqlite3"

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        if not _DATABASE_URL.match(url):
            raise ValueError(
                _(
                    "keine gültige Datenbank-URL (erwartet sqlite:///pfad/datei.sqlite3 oder "
                    "postgresql://benutzer:passwort@host/datenbank)"
                )
            )
        return url

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", mask_url(self.url)


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = Field(default=30.0, gt=0)
    pool_size: int = Field(default=8, ge=1, le=100)
    rate_per_second: float = Field(default=50.0, gt=0)
    burst: int = Field(default=50, ge=1)
    daily_cap: int | None = Field(default=None, ge=1)
    verify_tls: bool = True


_DNS_LABELS = r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*$"
_DNS_NAME = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})+$"


class EmailSettings(_Section):
    from_address: str = "newsletter@bzi.example.org"
    from_name: str = "BZI-Newsletter"
    reply_to: str | None = None
    list_id: str = "newsletter.bzi.example.org"
    unsubscribe_mailto: str | None = None
    public_url: str = "http://127.0.0.1:8080"  # outside --demo: refused unless https and public
    allow_insecure_public_url: bool = Field(
        default=False, description="test setups only: accept an http or local public_url"
    )
    # Envelope sender bounces+<signed token>@bounce_domain per message (VERP); unset: from_address
    bounce_domain: str | None = Field(default=None, pattern=_DNS_NAME)
    soft_bounce_limit: int = Field(
        default=3, ge=1, description="soft-bounced deliveries that suppress an address …"
    )
    soft_bounce_days: int = Field(default=14, ge=1, description="… within this many days")
    # DKIM (RFC 6376): domain, selector and an RSA key (2048 bit or more, PEM) sign every mail;
    # an Ed25519 key (RFC 8463) with a selector of its own adds a second signature.
    dkim_domain: str | None = Field(default=None, pattern=_DNS_NAME)
    dkim_selector: str | None = Field(default=None, pattern=_DNS_LABELS)
    dkim_private_key: SecretStr | None = None
    dkim_ed25519_selector: str | None = Field(default=None, pattern=_DNS_LABELS)
    dkim_ed25519_private_key: SecretStr | None = None

    @field_validator("dkim_private_key", "dkim_ed25519_private_key")
    @classmethod
    def _usable_key(cls, key: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if key is not None:  # the signing module (cryptography) only when a key is set
            from bzi_broadcast.channels.dkim import load_private_key

            kind: Literal["rsa", "ed25519"] = (
                "ed25519" if "ed25519" in (info.field_name or "") else "rsa"
            )
            load_private_key(key.get_secret_value().encode(), kind)
        return key


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class BouncesSettings(_Section):
    """The bounce mailbox, read over IMAP by ``serve`` (bzi_broadcast/bounces/mailbox.py)."""

    imap_host: str | None = None  # unset: no mailbox is read
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_security: Literal["tls", "starttls", "none"] = "tls"
    imap_username: str | None = None
    imap_password: SecretStr | None = None
    imap_folder: str = "INBOX"
    processed_folder: str = "Verarbeitet"  # reports that were read and acted upon
    failed_folder: str = "Unerkannt"  # anything else, for a person to look at
    poll_seconds: float = Field(default=60.0, ge=1, le=3600)
    timeout: float = Field(default=30.0, gt=0)
    verify_tls: bool = True

    @field_validator("imap_security")
    @classmethod
    def _encrypted(cls, security: str, info: ValidationInfo) -> str:
        host = info.data.get("imap_host")
        if security == "none" and host and host not in _LOCAL_HOSTS:
            raise ValueError(
                _(
                    "„none“ nur für einen IMAP-Server auf diesem Rechner (localhost); sonst "
                    "tls oder starttls"
                )
            )
        return security


class DeliverySettings(_Section):
    window: int = Field(default=200, ge=1, le=10000, description="rows in flight per worker")
    flush_interval: float = Field(default=0.2, gt=0)
    flush_size: int = Field(default=100, ge=1)
    lease_seconds: float = Field(default=300.0, gt=0)
    heartbeat_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="how often serve marks itself alive; silent 3× this + 1 s: its claims return",
    )
    poll_interval: float = Field(default=1.0, gt=0)
    sweep_interval: float = Field(default=1.0, gt=0)
    pause_error_rate: float = Field(default=0.5, gt=0, le=1)
    pause_min_samples: int = Field(default=50, ge=1)
    max_attempts: int = Field(default=12, ge=1)
    retry_base_delay: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(
        default=8.0, ge=0, description="on SIGTERM: how long sends in flight may take to finish"
    )


class MastodonSettings(_Section):
    enabled: bool = False
    base_url: str = "https://mastodon.example.org"
    access_token: SecretStr | None = None
    server_version: str | None = None  # an override; by default read from the instance
    timeout: float = Field(default=30.0, gt=0)
    requests_per_5_minutes: int = Field(default=300, ge=1)
    statuses_per_3_hours: int = Field(default=300, ge=1)
    media_per_30_minutes: int = Field(default=30, ge=1)
    content_warning_share: float = Field(
        default=0.5, gt=0, lt=1, description="the longest content warning, as a share of a post"
    )


class TelegramSettings(_Section):
    enabled: bool = False
    token: SecretStr | None = None
    base_url: str = "https://api.telegram.org/bot"
    chats: list[int] = Field(default_factory=list, description="channels and groups to post to")
    timeout: float = Field(default=20.0, gt=0)
    per_second: float = Field(default=30.0, gt=0)
    per_chat_per_second: float = Field(default=1.0, gt=0)
    per_group_per_minute: float = Field(default=20.0, gt=0)
    paid_broadcast: bool = False
    paid_per_second: float = Field(default=1000.0, gt=0)
    bot: bool = True  # answer /start, /stop, /themen … (needs enabled = true)
    webhook_url: str | None = None  # public HTTPS URL of /telegram/webhook; None: long polling
    webhook_secret: SecretStr | None = None  # X-Telegram-Bot-Api-Secret-Token


MIN_SECRET_KEY_BYTES = 32
MIN_METRICS_TOKEN_BYTES = 16
MAKE_A_KEY = 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'


class WebSettings(_Section):
    """The service's HTTP server: public pages, archive and feed, admin, API and operations."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port")
    # Reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: the client is the
    # rightmost address in the chain that is none of these (addresses or networks).
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    metrics_token: SecretStr | None = None  # /metrics wants it as a bearer token; unset: 404

    @field_validator("metrics_token")
    @classmethod
    def _guessable(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value().encode()) < MIN_METRICS_TOKEN_BYTES:
            raise ValueError(
                _("zu kurz: mindestens {n} Bytes; einen Schlüssel erzeugt „{command}“").format(
                    n=MIN_METRICS_TOKEN_BYTES, command=MAKE_A_KEY
                )
            )
        return token


class Topic(_Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    de: str
    en: str


class SubscriberSettings(_Section):
    consent_version: str = "2026-11"
    consent_text_de: str = (
        "Ich möchte den Newsletter des BZI per E-Mail erhalten. Meine Einwilligung kann ich "
        "jederzeit über den Abmeldelink in jeder E-Mail widerrufen."
    )
    consent_text_en: str = (
        "I want to receive the BZI newsletter by email. I can withdraw my consent at any time "
        "through the unsubscribe link in every email."
    )
    ip_logging: Literal["full", "truncated", "none"] = "truncated"
    confirm_hours: int = Field(default=72, ge=1, description="how long a confirmation link works")
    unconfirmed_days: int = Field(default=30, ge=1, description="then unconfirmed sign-ups go")
    signups_per_ip_per_hour: int = Field(default=10, ge=1)
    confirmations_per_address_per_day: int = Field(default=3, ge=1)
    topics: list[Topic] = Field(
        default_factory=lambda: [
            Topic(id="veranstaltungen", de="Veranstaltungen", en="Events"),
            Topic(id="stellungnahmen", de="Stellungnahmen", en="Statements"),
            Topic(id="projekte", de="Projekte", en="Projects"),
        ]
    )


class SecuritySettings(_Section):
    # No default: a key in the source would be everyone's key (it signs confirmation, unsubscribe
    # and preferences links and derives the webhook secret and suppression hashes). Empty means
    # "not configured"; whatever signs takes it through signing_key(), which refuses.
    secret_key: SecretStr = SecretStr("")
    session_hours: int = Field(default=12, ge=1, description="a staff login lasts this long")
    login_attempts: int = Field(default=5, ge=1, description="failed logins before a lockout")
    lockout_minutes: int = Field(default=5, ge=1, description="first lockout; doubles each time")
    lockout_max_minutes: int = Field(default=60, ge=1, description="the longest lockout")
    login_attempts_per_ip: int = Field(
        default=20, ge=1, description="failed logins from one address (IPv6: its /64) in 15 min"
    )

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if len(key.get_secret_value().encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(
                _("zu kurz: mindestens {n} Bytes; einen Schlüssel erzeugt „{command}“").format(
                    n=MIN_SECRET_KEY_BYTES, command=MAKE_A_KEY
                )
            )
        return key

    def signing_key(self) -> bytes:
        """The key that signs links and forms; ``ConfigError`` naming the setting while none is
        configured."""
        key = self.secret_key.get_secret_value()
        if not key:
            raise ConfigError(missing_secret_key())
        return key.encode()


def missing_secret_key() -> str:
    return _(
        "security.secret_key: fehlt – erzeugen Sie einen Schlüssel mit „{command}“ und setzen Sie "
        "ihn in der Konfiguration oder als Datei über BZI_SECURITY_SECRET_KEY_FILE "
        "(zum Ausprobieren ohne Schlüssel: serve --demo)"
    ).format(command=MAKE_A_KEY)


class LoggingSettings(_Section):
    format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(_Section):
    templates_dir: Path | None = None
    organisation: Organisation = Organisation()
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    email: EmailSettings = EmailSettings()
    bounces: BouncesSettings = BouncesSettings()
    delivery: DeliverySettings = DeliverySettings()
    mastodon: MastodonSettings = MastodonSettings()
    telegram: TelegramSettings = TelegramSettings()
    web: WebSettings = WebSettings()
    subscribers: SubscriberSettings = SubscriberSettings()
    security: SecuritySettings = SecuritySettings()
    logging: LoggingSettings = LoggingSettings()

    def secrets(self) -> list[str]:
        """Every configured credential, for masking in logs."""
        values = [
            self.smtp.password,
            self.bounces.imap_password,
            self.mastodon.access_token,
            self.telegram.token,
            self.telegram.webhook_secret,
            self.security.secret_key,
            self.web.metrics_token,
            self.email.dkim_private_key,
            self.email.dkim_ed25519_private_key,
        ]
        found = [v.get_secret_value() for v in values if v is not None]
        password = _url_password(self.database.url)
        return [s for s in [*found, password] if s]


RenderSettings = Settings  # the renderers read templates_dir and organisation only

SECRET_WORDS = ("password", "secret", "token", "key")
IGNORED_VARIABLES = frozenset({"BZI_LANG", "BZI_LOG_LEVEL"})


def settings_of(
    args: argparse.Namespace, *, signing: bool = False, public: bool = False
) -> Settings:
    """The configured settings; ``signing``: this command signs (links, forms, hashes), so
    ``security.secret_key`` must be set; ``public``: it links to ``email.public_url``."""
    settings = load_settings(args.config, signing=signing, public=public)
    if getattr(args, "database", None):
        settings = settings.model_copy(
            update={"database": settings.database.model_copy(update={"url": args.database})}
        )
    return settings


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    signing: bool = False,
    public: bool = False,
) -> Settings:
    """Read ``path`` (TOML, optional) and the environment; ``ConfigError`` names each problem,
    with the file line or the environment variable it came from. ``signing``: the caller signs
    links or forms, so ``security.secret_key`` must be set. ``public``: the caller puts links to
    ``email.public_url`` into mails and posts (``serve`` outside the demo, ``queue``), so it must
    be an HTTPS address on a public host."""
    text = _read_text(path) if path else ""
    data = _parse_toml(path, text) if path else {}
    origins = _Origins(path, text)
    problems: list[str] = []
    _apply_environment(data, os.environ if environ is None else environ, problems, origins)
    problems.extend(_retired(data, origins))
    if signing and not _has_key(data) and ("security", "secret_key") not in origins.variables:
        problems.append(missing_secret_key())  # (a key file that cannot be read is reported)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(e, origins) for e in exc.errors())
    else:
        problems.extend(_missing_credentials(settings))
        if public:
            problems.extend(_insecure_public_url(settings.email, origins))
        problems.extend(_incomplete_dkim(settings.email))
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


CONFIG_MAX_BYTES = 1024 * 1024  # a configuration is a few kilobytes
SECRET_MAX_BYTES = 64 * 1024


def _read_text(path: Path) -> str:
    """The file's text: a regular file (not /dev/zero or a pipe) of at most 1 MB, in UTF-8."""
    try:
        raw = read_capped(path, CONFIG_MAX_BYTES)
    except FileRefused as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise ConfigError(_("{path}: größer als 1 MB").format(path=path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(_("{path}: keine UTF-8-Textdatei").format(path=path)) from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            _("{path}: kein gültiges TOML: {reason}").format(path=path, reason=exc)
        ) from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise ConfigError(
            _("{path}: kein gültiges TOML: zu tief verschachtelt").format(path=path)
        ) from None


class _Origins:
    """Where each setting came from: an environment variable, or a line of the TOML file."""

    def __init__(self, path: Path | None, text: str) -> None:
        self._path = path
        self._lines = text.splitlines()
        self.variables: dict[tuple[str, ...], str] = {}

    def of(self, loc: tuple[str, ...]) -> str | None:
        for length in range(len(loc), 0, -1):
            if loc[:length] in self.variables:
                return _("aus {variable}").format(variable=self.variables[loc[:length]])
        line = self._line(loc)
        if line is None:
            return None
        return _("{path}, Zeile {line}").format(path=self._path, line=line)

    def _line(self, loc: tuple[str, ...]) -> int | None:
        """The line that sets ``loc`` (a ``[section]`` key, or a top-level key)."""
        section, key = (loc[0], loc[1]) if len(loc) > 1 else ("", loc[0] if loc else "")
        current = ""
        for number, line in enumerate(self._lines, start=1):
            header = re.match(r"\s*\[([^\[\]]+)\]", line)
            if header:
                current = header.group(1).strip()
                if current == section and len(loc) == 1:
                    return number
            elif current == section and re.match(rf"\s*{re.escape(key)}\s*=", line):
                return number
        return None


def _has_key(data: dict[str, Any]) -> bool:
    """Whether a key is given at all (one too short is the validation's to report)."""
    security = data.get("security")
    return isinstance(security, dict) and security.get("secret_key") is not None


def _retired(data: dict[str, Any], origins: _Origins) -> list[str]:
    """Settings that are gone: dropped when they are off, refused (with their successor) when
    they would have meant something."""
    web = data.get("web")
    if not isinstance(web, dict) or "trust_proxy" not in web:
        return []
    # trust_proxy = true believed any X-Forwarded-For; which proxies to believe cannot be
    # guessed, so the operator names them.
    if str(web.pop("trust_proxy")).lower() in ("false", "0", ""):
        return []
    where = origins.of(("web", "trust_proxy"))
    return [
        _(
            "web.trust_proxy: ersetzt durch web.trusted_proxies – die Adressen Ihrer "
            'Reverse-Proxys, z. B. ["127.0.0.1"]{origin}'
        ).format(origin=f" ({where})" if where else "")
    ]


def _apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], problems: list[str], origins: _Origins
) -> None:
    sections = {
        name
        for name, f in Settings.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }
    for variable, value in environ.items():
        if not variable.startswith("BZI_") or variable in IGNORED_VARIABLES:
            continue
        name = variable[4:].lower()
        if name.endswith("_file"):
            name, secret = name[:-5], _read_secret(variable, value, problems)
            if secret is None:  # reported; the setting's own complaints would only repeat it
                origins.variables[tuple(name.partition("_")[::2])] = variable
                continue
            value = secret
        section, _sep, key = name.partition("_")
        if section in sections and key:
            data.setdefault(section, {})[key] = _list_or_text(section, key, value)
            origins.variables[(section, key)] = variable
        elif name in Settings.model_fields:
            data[name] = value
            origins.variables[(name,)] = variable
        # other BZI_ variables (BZI_TEST_PG_URL …) belong to tools around the service


def _list_or_text(section: str, key: str, value: str) -> Any:
    """A list setting from the environment: JSON (``[-100123, -100456]``) or comma-separated."""
    model: Any = Settings.model_fields[section].annotation
    field = model.model_fields.get(key)
    if field is None or get_origin(field.annotation) is not list:
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # reported by the validation, naming the variable
    return [part.strip() for part in value.split(",") if part.strip()]


def _read_secret(variable: str, path: str, problems: list[str]) -> str | None:
    try:
        raw = read_capped(Path(path), SECRET_MAX_BYTES)
        if len(raw) > SECRET_MAX_BYTES:
            raise FileRefused(_("größer als 64 KB"))
        return raw.decode("utf-8").strip()
    except FileRefused as exc:
        problems.append(
            _("{variable}: Datei {path} nicht lesbar ({reason})").format(
                variable=variable, path=path, reason=exc.message
            )
        )
        return None
    except UnicodeDecodeError:
        problems.append(
            _("{variable}: Datei {path} ist keine UTF-8-Textdatei").format(
                variable=variable, path=path
            )
        )
        return None


def _describe(error: Any, origins: _Origins) -> str:
    loc = tuple(str(part) for part in error["loc"])
    where = ".".join(loc)
    details = []
    if error["type"] == "extra_forbidden":
        problem = _("unbekannte Einstellung")
        if guess := _close_match(loc):
            details.append(_("meinten Sie „{name}“?").format(name=guess))
    else:
        problem = _problem(error)
        if error["type"] != "missing":
            details.append(_("Wert: {value}").format(value=_safe_value(where, error.get("input"))))
    if origin := origins.of(loc):
        details.append(origin)
    return f"{where}: {problem}" + (f" ({'; '.join(details)})" if details else "")


def _problem(error: Any) -> str:
    """Pydantic's complaint in the operator's words."""
    ctx = error.get("ctx") or {}
    kind = error["type"]
    simple = {
        "int_parsing": _("keine ganze Zahl"),
        "int_type": _("keine ganze Zahl"),
        "int_from_float": _("keine ganze Zahl"),
        "float_parsing": _("keine Zahl"),
        "float_type": _("keine Zahl"),
        "bool_parsing": _("erwartet true oder false"),
        "bool_type": _("erwartet true oder false"),
        "string_type": _("erwartet einen Text"),
        "list_type": _("erwartet eine Liste"),
        "model_type": _("erwartet einen Abschnitt (Tabelle)"),
        "dict_type": _("erwartet einen Abschnitt (Tabelle)"),
        "missing": _("fehlt"),
        "ip_any_network": _("keine IP-Adresse und kein Netz (z. B. 10.0.0.0/8)"),
    }
    if kind in simple:
        return simple[kind]
    limits = {
        "greater_than_equal": (_("mindestens {limit}"), "ge"),
        "greater_than": (_("muss größer als {limit} sein"), "gt"),
        "less_than_equal": (_("höchstens {limit}"), "le"),
        "less_than": (_("muss kleiner als {limit} sein"), "lt"),
        "literal_error": (_("erlaubt: {limit}"), "expected"),
        "string_pattern_mismatch": (_("passt nicht zum Muster {limit}"), "pattern"),
    }
    if kind in limits:
        text, name = limits[kind]
        return text.format(limit=ctx.get(name))
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def _close_match(loc: tuple[str, ...]) -> str | None:
    """The known setting an unknown one was probably meant to be."""
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = field.annotation
    if not hasattr(model, "model_fields"):
        return None
    found = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return ".".join([*loc[:-1], found[0]]) if found else None


def _insecure_public_url(email: EmailSettings, origins: _Origins) -> list[str]:
    """Unsubscribe, confirmation and image links go out in every mail: RFC 8058 wants HTTPS for
    one-click unsubscribe, and a local address reaches nobody. Test setups say so explicitly."""
    if email.allow_insecure_public_url:
        return []
    url = urlsplit(email.public_url)
    if url.scheme == "https" and url.hostname and not _local_host(url.hostname):
        return []
    where = origins.of(("email", "public_url"))
    return [
        _(
            "email.public_url{where}: „{url}“ ist keine öffentliche HTTPS-Adresse – Links in "
            "E-Mails brauchen https:// und einen öffentlichen Namen (nur für Testumgebungen: "
            "email.allow_insecure_public_url = true)"
        ).format(where=f" ({where})" if where else "", url=email.public_url)
    ]


def _local_host(host: str) -> bool:
    """localhost, a *.localhost name, or a loopback, private or unspecified IP address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def _missing_credentials(settings: Settings) -> list[str]:
    needed = [
        (settings.telegram.enabled, settings.telegram.token, "telegram", "token"),
        (settings.mastodon.enabled, settings.mastodon.access_token, "mastodon", "access_token"),
    ]
    return [
        _("{section}.{key}: fehlt, obwohl {section}.enabled = true (oder {variable})").format(
            section=section, key=key, variable=f"BZI_{section}_{key}_FILE".upper()
        )
        for enabled, value, section, key in needed
        if enabled and value is None
    ]


def _incomplete_dkim(email: EmailSettings) -> list[str]:
    """DKIM needs domain, selector and RSA key together; the Ed25519 pair is an addition."""
    core = ("dkim_domain", "dkim_selector", "dkim_private_key")
    extra = ("dkim_ed25519_selector", "dkim_ed25519_private_key")
    given = [key for key in (*core, *extra) if getattr(email, key) is not None]
    wanted = [*core, *extra] if set(given) & set(extra) else list(core) if given else []
    needed = ", ".join(f"email.{key}" for key in wanted)
    problems = [
        _("email.{key}: fehlt – DKIM braucht {needed}{file}").format(
            key=key,
            needed=needed,
            file=f" (BZI_EMAIL_{key.upper()}_FILE)" if key.endswith("_key") else "",
        )
        for key in wanted
        if key not in given
    ]
    if email.dkim_selector and email.dkim_selector == email.dkim_ed25519_selector:
        problems.append(
            _("email.dkim_ed25519_selector: muss sich von email.dkim_selector unterscheiden")
        )
    return problems


def _safe_value(where: str, value: Any) -> str:
    if any(word in where for word in SECRET_WORDS):
        return "***"
    if where == "database.url" and isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def mask_url(url: str) -> str:
    """A URL with its password (if any) replaced by ``***``."""
    return re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1***@", url)


def _url_password(url: str) -> str | None:
    found = re.search(r"://[^/@:\s]*:([^/@\s]*)@", url)
    return found.group(1) if found else None
