"""The one exception hierarchy of bzi-broadcast.

Each class's docstring is its default message. Library errors are translated into these at the
edge where they occur (``raise ... from exc``), so callers only ever handle ``BroadcastError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bzi_broadcast.i18n import N_, ngettext
from bzi_broadcast.i18n import gettext as _


class BroadcastError(Exception):
    """Ein Fehler in bzi-broadcast."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or _((self.__doc__ or "").strip()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotFoundError(BroadcastError):
    """Nicht gefunden."""


class ConfigError(BroadcastError):
    """Die Konfiguration ist ungültig."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with an input: where (field path, line) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or _("(Dokument)")
        if self.line is not None:
            where = _("{where} (Zeile {line})").format(where=where, line=self.line)
        return f"{where}: {self.message}"


class ContentError(BroadcastError):
    """Die Ankündigung ist ungültig."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        head = f"{source}: " if source else ""
        count = ngettext(
            "{n} Problem in der Ankündigung:", "{n} Probleme in der Ankündigung:", len(problems)
        ).format(n=len(problems))
        lines = "\n".join(f"  – {p}" for p in self.problems)
        super().__init__(f"{head}{count}\n{lines}")


class TemplateError(BroadcastError):
    """Eine Vorlage ist fehlerhaft."""


# The docstrings above are the default messages; listed here so the catalog extractor finds them.
_DEFAULT_MESSAGES = (
    N_("Ein Fehler in bzi-broadcast."),
    N_("Die Konfiguration ist ungültig."),
    N_("Die Ankündigung ist ungültig."),
    N_("Eine Vorlage ist fehlerhaft."),
)


class DeliveryError(BroadcastError):
    """Die Zustellung ist fehlgeschlagen."""


class TransientError(DeliveryError):
    """Vorübergehender Fehler; später erneut versuchen."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownOutcomeError(TransientError):
    """Ob die Nachricht angenommen wurde, ist unklar; sie wird erneut gesendet."""


class PermanentError(DeliveryError):
    """Dauerhafter Fehler; ein erneuter Versuch hilft nicht."""

    def __init__(self, message: str | None = None, *, suppress_recipient: bool = False) -> None:
        super().__init__(message)
        self.suppress_recipient = suppress_recipient


class ChannelAuthError(DeliveryError):
    """Der Kanal ist nicht (mehr) angemeldet und muss neu verbunden werden."""


_DELIVERY_MESSAGES = (
    N_("Die Zustellung ist fehlgeschlagen."),
    N_("Vorübergehender Fehler; später erneut versuchen."),
    N_("Ob die Nachricht angenommen wurde, ist unklar; sie wird erneut gesendet."),
    N_("Dauerhafter Fehler; ein erneuter Versuch hilft nicht."),
    N_("Der Kanal ist nicht (mehr) angemeldet und muss neu verbunden werden."),
)
