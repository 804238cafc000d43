"""What every channel renderer shares: the environment, the organisation, small helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jinja2

from bzi_broadcast.config import Organisation
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.i18n import use_locale

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True, kw_only=True)
class RenderContext:
    env: jinja2.Environment
    organisation: Organisation

    def render(self, template: str, announcement: Announcement, **variables: Any) -> str:
        """Render ``template`` in the announcement's language."""
        with use_locale(announcement.language):
            return self.env.get_template(template).render(
                announcement=announcement, organisation=self.organisation, **variables
            )


def tidy(text: str) -> str:
    """Normalise template whitespace: no trailing spaces, at most one blank line in a row."""
    text = _TRAILING_SPACE.sub("\n", text.replace("\r\n", "\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
