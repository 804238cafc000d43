"""Translations: German is the source language, English the second locale.

Message ids are the German strings. Catalogs live in ``bzi_broadcast/locale/<lang>/LC_MESSAGES/
messages.po`` and are compiled in memory on first use, so a checkout needs no build step. The active
locale is a context variable: concurrent renders in different languages never see each other's.
"""

from __future__ import annotations

import gettext as _gettext
import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Final

LOCALES: Final = ("de", "en")
DEFAULT_LOCALE: Final = "de"
LOCALE_DIR: Final = Path(__file__).parent / "locale"

_active: ContextVar[str] = ContextVar("bzi_locale", default=DEFAULT_LOCALE)


@cache
def translations(locale: str) -> _gettext.NullTranslations:
    """The compiled catalog of ``locale`` (German needs none: its ids are the German text)."""
    po_path = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    if locale == DEFAULT_LOCALE or not po_path.exists():
        return _gettext.NullTranslations()
    # Babel only here: German (the default) needs no catalog, and the command line starts faster
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po_path.open("rb") as po_file:
        catalog = read_po(po_file, locale=locale)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return _gettext.GNUTranslations(buffer)


def normalize_locale(value: str | None) -> str:
    """Map ``en_US.UTF-8``, ``EN`` or ``de-AT`` to a supported locale; German otherwise."""
    if not value:
        return DEFAULT_LOCALE
    short = value.replace("-", "_").split("_")[0].split(".")[0].lower()
    return short if short in LOCALES else DEFAULT_LOCALE


def current_locale() -> str:
    return _active.get()


@contextmanager
def use_locale(locale: str) -> Iterator[None]:
    token = _active.set(normalize_locale(locale))
    try:
        yield
    finally:
        _active.reset(token)


def adopt_locale(locale: str) -> None:
    """Switch the locale for the rest of the enclosing ``use_locale`` block (a staff member's own
    language, known only once the handler has found who is logged in)."""
    _active.set(normalize_locale(locale))


def gettext(message: str) -> str:
    return translations(_active.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_active.get()).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated later, where it is shown."""
    return message


_ = gettext
