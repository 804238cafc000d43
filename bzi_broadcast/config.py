"""Settings: a TOML file, overridden by ``BZI_<SECTION>_<KEY>`` environment variables.

Every secret may also come from a file named by ``BZI_<SECTION>_<KEY>_FILE`` (Docker secrets).
Every problem is reported at once, naming the setting; secrets never appear in reprs or logs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from bzi_broadcast.errors import ConfigError
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


class DatabaseSettings(_Section):
    url: str = "sqlite:///data/bzi-broadcast.sqlite3"


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


class EmailSettings(_Section):
    from_address: str = "newsletter@bzi.example.org"
    from_name: str = "BZI-Newsletter"
    reply_to: str | None = None
    list_id: str = "newsletter.bzi.example.org"
    unsubscribe_mailto: str | None = None
    public_url: str = "http://127.0.0.1:8080"


class DeliverySettings(_Section):
    window: int = Field(default=200, ge=1, le=10000, description="rows in flight per worker")
    flush_interval: float = Field(default=0.2, gt=0)
    flush_size: int = Field(default=100, ge=1)
    lease_seconds: float = Field(default=300.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    sweep_interval: float = Field(default=1.0, gt=0)
    pause_error_rate: float = Field(default=0.5, gt=0, le=1)
    pause_min_samples: int = Field(default=50, ge=1)
    max_attempts: int = Field(default=12, ge=1)
    retry_base_delay: float = Field(default=30.0, gt=0)


class MastodonSettings(_Section):
    enabled: bool = False
    base_url: str = "https://mastodon.example.org"
    access_token: SecretStr | None = None
    server_version: str = "4.3.0"
    timeout: float = Field(default=30.0, gt=0)
    requests_per_5_minutes: int = Field(default=300, ge=1)
    statuses_per_3_hours: int = Field(default=300, ge=1)
    media_per_30_minutes: int = Field(default=30, ge=1)


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


class WebSettings(_Section):
    """The service's HTTP server: public pages, archive and feed (and later admin and API)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port")
    trust_proxy: bool = False  # take the client IP from X-Forwarded-For (behind a reverse proxy)


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
    secret_key: SecretStr = SecretStr("demo-secret-change-me-demo-secret-change-me")
    session_hours: int = Field(default=12, ge=1, description="a staff login lasts this long")
    login_attempts: int = Field(default=5, ge=1, description="failed logins before a lockout")
    lockout_minutes: int = Field(default=5, ge=1, description="first lockout; doubles each time")


class Settings(_Section):
    templates_dir: Path | None = None
    organisation: Organisation = Organisation()
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    email: EmailSettings = EmailSettings()
    delivery: DeliverySettings = DeliverySettings()
    mastodon: MastodonSettings = MastodonSettings()
    telegram: TelegramSettings = TelegramSettings()
    web: WebSettings = WebSettings()
    subscribers: SubscriberSettings = SubscriberSettings()
    security: SecuritySettings = SecuritySettings()


RenderSettings = Settings  # the renderers read templates_dir and organisation only


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (TOML, optional) and the environment; ``ConfigError`` names each problem."""
    data = _read_toml(path) if path else {}
    problems: list[str] = []
    _apply_environment(data, os.environ if environ is None else environ, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(error) for error in exc.errors())) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(_("{path}: {reason}").format(path=path, reason=exc.strerror)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            _("{path}: kein gültiges TOML: {reason}").format(path=path, reason=exc)
        ) from None


def _apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], problems: list[str]
) -> None:
    sections = {
        name
        for name, f in Settings.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }
    for variable, value in environ.items():
        if not variable.startswith("BZI_") or variable in ("BZI_LANG", "BZI_LOG_LEVEL"):
            continue
        name = variable[4:].lower()
        if name.endswith("_file"):
            name, value = name[:-5], _read_secret(variable, value, problems)
        section, _sep, key = name.partition("_")
        if section in sections and key:
            data.setdefault(section, {})[key] = value
        elif name in Settings.model_fields:
            data[name] = value


def _read_secret(variable: str, path: str, problems: list[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(
            _("{variable}: Datei {path} nicht lesbar ({reason})").format(
                variable=variable, path=path, reason=exc.strerror
            )
        )
        return ""


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return _("{where}: unbekannte Einstellung").format(where=where)
    return _("{where}: {problem} (Wert: {value})").format(
        where=where, problem=error["msg"], value=_safe_value(where, error.get("input"))
    )


def _safe_value(where: str, value: Any) -> str:
    if any(word in where for word in ("password", "secret", "token", "key")):
        return "***"
    return repr(value)
