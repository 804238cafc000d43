"""Settings: what an organisation configures (TOML file, later also ``BZI_*`` variables).

Only the parts the renderers need live here for now; the service settings join them later.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bzi_broadcast.errors import ConfigError


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Organisation(_Settings):
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


class RenderSettings(_Settings):
    organisation: Organisation = Organisation()
    templates_dir: Path | None = Field(
        default=None, description="Directory whose templates shadow the packaged ones"
    )


def load_settings(path: Path | None) -> RenderSettings:
    """Read ``path`` (TOML); the defaults when ``path`` is None."""
    if path is None:
        return RenderSettings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return RenderSettings.model_validate(data)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
