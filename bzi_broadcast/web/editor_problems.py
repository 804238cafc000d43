"""The content model's problems in the editor's terms: on which input, in which words.

The model names a problem by its path (``blocks[2].partners[1].name``) in the words of the
announcement file; the form shows it beside its input (``blocks-2-partners-1-name``), and in the
summary at the top with the field's label within its block (``Block 3 (Dank), Partner 2: Name``).
"""

from __future__ import annotations

import re

from bzi_broadcast.content.loader import validate_announcement
from bzi_broadcast.content.model import Announcement
from bzi_broadcast.errors import ContentError
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.web.editor_form import OTHER_ROLE, State, to_data

Errors = dict[str, list[str]]
_PATH_PARTS = re.compile(r"[^.\[\]]+")


def validate(state: State) -> tuple[Announcement | None, Errors]:
    """The announcement, or the problems by field name."""
    try:
        return validate_announcement(to_data(state)), {}
    except ContentError as exc:
        errors: Errors = {}
        for problem in exc.problems:
            name = field_of(problem.path, state)
            errors.setdefault(name, []).append(_form_message(name, problem.message))
        return None, errors


def field_of(path: str, state: State) -> str:
    """The input (or group) a model path like ``blocks[2].partners[1].name`` belongs to."""
    parts: list[str] = _PATH_PARTS.findall(path)
    if not parts:
        return "expires_at"  # the one check on the whole announcement: expiry after publication
    if parts[0] in ("topics", "hashtags"):
        return parts[0]
    if parts[0] == "image":
        return "image-alt" if parts[1:] == ["alt"] else "image-file"
    if parts[0] == "blocks" and len(parts) >= 2:
        return _block_field(parts, state)
    return "-".join(parts)


def _block_field(parts: list[str], state: State) -> str:
    prefix = f"blocks-{parts[1]}"
    if len(parts) == 2:  # the event's own check: start and end
        index = int(parts[1])
        blocks = state["blocks"]
        is_event = index < len(blocks) and blocks[index]["type"] == "event"
        return f"{prefix}-end" if is_event else prefix
    if parts[2] == "organisers":
        return f"{prefix}-organisers"
    if parts[2] == "partners" and len(parts) >= 5 and parts[4] == "role":
        return f"{prefix}-partners-{parts[3]}-{_role_input(state, parts)}"
    return "-".join(parts[:5])


def _role_input(state: State, parts: list[str]) -> str:
    """A partner's own role label is typed in its own input; a problem with it belongs there."""
    block, partner = int(parts[1]), int(parts[3])
    try:
        chosen = state["blocks"][block]["partners"][partner]["role"]
    except (IndexError, KeyError):
        return "role"
    return "role_label" if chosen == OTHER_ROLE else "role"


_FORM_MESSAGES = {
    N_("expires_at muss nach publish_at liegen"): N_(
        "Der Ablauf muss nach der Veröffentlichung liegen."
    ),
    N_("end liegt vor start"): N_("Das Ende liegt vor dem Beginn."),
    N_("start und end müssen beide Datum oder beide Datum mit Uhrzeit sein"): N_(
        "Geben Sie für Beginn und Ende beide eine Uhrzeit an oder beide keine."
    ),
    N_("Pflichtfeld fehlt"): N_("Bitte ausfüllen."),
    N_("ist keine gültige http(s)-Adresse"): N_(
        "Bitte eine vollständige Adresse angeben, die mit https:// oder http:// beginnt."
    ),
    N_("darf nicht leer sein"): N_("Bitte ausfüllen."),
}


def _form_message(name: str, message: str) -> str:
    """The model's words for a file, in the form's words where they differ."""
    if name.endswith("-role_label"):
        return _("Bitte geben Sie die Rolle an, z. B. „Mit Unterstützung von“.")
    if name == "translation_group":
        return _(
            "Nur Buchstaben, Ziffern, Punkt, Binde- und Unterstrich, höchstens 100 Zeichen; "
            "am Anfang ein Buchstabe oder eine Ziffer."
        )
    if message in (_("darf nicht leer sein"), _("Pflichtfeld fehlt")):
        if name == "blocks":
            return _("Fügen Sie mindestens einen Block hinzu.")
        if name.endswith("-partners"):
            return _("Nennen Sie mindestens einen Partner.")
        if name == "image-alt":
            return _(
                "Beschreiben Sie das Bild für Menschen, die es nicht sehen können "
                "(Alternativtext, Pflicht)."
            )
    for model, form in _FORM_MESSAGES.items():
        if message == _(model):
            return _(form)
    return message


# --- labels ---------------------------------------------------------------------------------------

BLOCK_NAMES = {
    "event": N_("Veranstaltung"),
    "quote": N_("Zitat"),
    "thanks": N_("Dank"),
    "text": N_("Text"),
    "link": N_("Link"),
}
_LABELS = {
    "title": N_("Titel"),
    "language": N_("Sprache"),
    "summary": N_("Zusammenfassung"),
    "topics": N_("Themen"),
    "link": N_("Link „Weiterlesen“"),
    "hashtags": N_("Hashtags"),
    "publish_at": N_("Veröffentlichung"),
    "expires_at": N_("Ablauf"),
    "archive": N_("Im öffentlichen Archiv und im Feed zeigen"),
    "translation_group": N_("Sprachfassungen verbinden (Kennung)"),
    "channels-email-subject": N_("Betreff"),
    "channels-email-preheader": N_("Vorschautext"),
    "channels-mastodon-visibility": N_("Sichtbarkeit"),
    "channels-mastodon-content_warning": N_("Inhaltswarnung"),
    "channels-telegram-link_preview": N_("Linkvorschau zeigen"),
    "channels-telegram-preview_url": N_("Adresse für die Linkvorschau"),
    "channels-telegram-prefer_small_media": N_("Kleines Vorschaubild"),
    "channels-telegram-show_above_text": N_("Vorschau über dem Text"),
    "image-file": N_("Bild"),
    "image-alt": N_("Alternativtext (Bildbeschreibung)"),
    "blocks": N_("Blöcke"),
    "event.name": N_("Name der Veranstaltung"),
    "event.start": N_("Beginn: Datum"),
    "event.start-time": N_("Beginn: Uhrzeit (optional)"),
    "event.end": N_("Ende: Datum (optional)"),
    "event.end-time": N_("Ende: Uhrzeit (optional)"),
    "event.place": N_("Ort"),
    "event.organisers": N_("Veranstalter (einer je Zeile)"),
    "event.description": N_("Beschreibung (Markdown)"),
    "event.formats": N_("Formate"),
    "formats.kind": N_("Art (z. B. Workshop)"),
    "formats.title": N_("Titel"),
    "formats.led_by": N_("Leitung oder Beteiligung"),
    "quote.speaker": N_("Name"),
    "quote.role": N_("Funktion oder Organisation"),
    "quote.text": N_("Zitat (Absätze durch eine Leerzeile trennen)"),
    "thanks.intro": N_("Einleitung"),
    "thanks.partners": N_("Partner"),
    "thanks.closing": N_("Schlusssatz"),
    "partners.name": N_("Name"),
    "partners.role": N_("Rolle"),
    "partners.role_label": N_("Eigene Bezeichnung der Rolle"),
    "partners.url": N_("Website"),
    "text.text": N_("Text (Markdown)"),
    "link.label": N_("Linktext"),
    "link.url": N_("Adresse"),
    "link.description": N_("Beschreibung"),
}


_ITEM_NAMES = {"formats": N_("Format %(number)s"), "partners": N_("Partner %(number)s")}


def label(key: str) -> str:
    """A field's label: ``title``, ``quote.speaker``, ``partners.url``."""
    return _(_LABELS[key])


def where(name: str, state: State) -> str:
    """A field's name for the summary of problems: its label, within its block and item."""
    parts = name.split("-", 4) if name.startswith("blocks-") else [name]
    if len(parts) < 2 or not parts[1].isdigit():
        return label(name) if name in _LABELS else name
    index = int(parts[1])
    kind = state["blocks"][index]["type"] if index < len(state["blocks"]) else "text"
    block = _("Block {number} ({kind})").format(number=index + 1, kind=_(BLOCK_NAMES[kind]))
    if len(parts) == 2:
        return block
    rest = name.split("-", 2)[2]
    if rest.startswith(("formats-", "partners-")):
        items, number, *field = rest.split("-", 2)
        item = _(_ITEM_NAMES[items]) % {"number": int(number) + 1}
        key = f"{items}.{field[0]}" if field else f"{kind}.{items}"
        return f"{block}, {item}: {label(key)}" if field else f"{block}: {label(key)}"
    key = f"{kind}.{rest}"
    return f"{block}: {label(key)}" if key in _LABELS else block
