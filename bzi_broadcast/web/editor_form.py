"""The editor's form: what was typed, kept as typed; turned into the content model's data.

A form state is a dict keyed by the form's own field names (``title``, ``channels-email-subject``,
``image-alt``), with ``topics`` a list, checkboxes as booleans and ``blocks`` a list of dicts whose
keys are the block's field names (``speaker``, ``start-time``) plus ``type`` and, for events and
thanks, the lists ``formats`` and ``partners``. Its inputs are named ``blocks-0-speaker``,
``blocks-2-partners-1-name``. The state is rendered back exactly as typed, whatever the model makes
of it (``editor_problems`` maps the model's problems back to these names).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from multidict import MultiMapping

from bzi_broadcast.content.model import LOCAL_TZ, Announcement, Block, EventBlock

State = dict[str, Any]

BLOCK_TYPES = ("event", "quote", "thanks", "text", "link")
BLOCK_FIELDS: dict[str, tuple[str, ...]] = {
    "event": (
        "name",
        "start",
        "start-time",
        "end",
        "end-time",
        "place",
        "organisers",
        "description",
    ),
    "quote": ("speaker", "role", "text"),
    "thanks": ("intro", "closing"),
    "text": ("text",),
    "link": ("label", "url", "description"),
}
ITEM_FIELDS: dict[str, tuple[str, ...]] = {
    "formats": ("kind", "title", "led_by"),
    "partners": ("name", "role", "role_label", "url"),
}
ITEMS_OF = {"event": "formats", "thanks": "partners"}
TEXT_FIELDS = (
    "title",
    "language",
    "summary",
    "link",
    "hashtags",
    "publish_at",
    "expires_at",
    "translation_group",
    "channels-email-subject",
    "channels-email-preheader",
    "channels-mastodon-visibility",
    "channels-mastodon-content_warning",
    "channels-telegram-preview_url",
    "image-src",
    "image-alt",
    "image-width",
    "image-height",
)
CHECKBOXES = (
    "archive",
    "channels-telegram-link_preview",
    "channels-telegram-prefer_small_media",
    "channels-telegram-show_above_text",
)
PARTNER_ROLES = ("implemented_by", "in_cooperation_with", "funded_by")
OTHER_ROLE = "other"
MAX_BLOCKS = 40
MAX_ITEMS = 40
_SPLIT_TAGS = re.compile(r"[\s,]+")
_ACTION = re.compile(r"^(add|remove|up|down)(?:-(format|partner))?(?:-(\d+))?(?:-(\d+))?$")


# --- building a state ---------------------------------------------------------------------------


def blank() -> State:
    state: State = dict.fromkeys(TEXT_FIELDS, "")
    state |= {"language": "de", "channels-mastodon-visibility": "public", "topics": []}
    state |= {"archive": True, "channels-telegram-link_preview": True}
    state |= {"channels-telegram-prefer_small_media": False}
    state |= {"channels-telegram-show_above_text": False, "blocks": []}
    return state


def blank_block(kind: str) -> State:
    block: State = {"type": kind, **dict.fromkeys(BLOCK_FIELDS[kind], "")}
    if kind == "event":
        block["formats"] = []  # optional: added when there are any
    if kind == "thanks":
        block["partners"] = [blank_item("partners")]  # at least one is needed
    return block


def blank_item(items: str) -> State:
    item = dict.fromkeys(ITEM_FIELDS[items], "")
    if items == "partners":
        item["role"] = PARTNER_ROLES[0]
    return item


def from_announcement(announcement: Announcement) -> State:
    a, channels = announcement, announcement.channels
    state = blank() | {
        "title": a.title,
        "language": str(a.language),
        "summary": a.summary or "",
        "link": a.link or "",
        "hashtags": " ".join(a.hashtags),
        "publish_at": local_input(a.publish_at),
        "expires_at": local_input(a.expires_at),
        "translation_group": a.translation_group or "",
        "topics": list(a.topics),
        "archive": a.archive,
        "channels-email-subject": channels.email.subject or "",
        "channels-email-preheader": channels.email.preheader or "",
        "channels-mastodon-visibility": str(channels.mastodon.visibility),
        "channels-mastodon-content_warning": channels.mastodon.content_warning or "",
        "channels-telegram-link_preview": channels.telegram.link_preview,
        "channels-telegram-preview_url": channels.telegram.preview_url or "",
        "channels-telegram-prefer_small_media": channels.telegram.prefer_small_media,
        "channels-telegram-show_above_text": channels.telegram.show_above_text,
        "blocks": [_block_state(block) for block in a.blocks],
    }
    if a.image is not None:
        state |= {"image-src": a.image.src, "image-alt": a.image.alt}
        state |= {"image-width": _text(a.image.width), "image-height": _text(a.image.height)}
    return state


def _block_state(block: Block) -> State:
    values = block.model_dump(mode="python")
    state = blank_block(block.type)
    for key in BLOCK_FIELDS[block.type]:
        if isinstance(values.get(key), str):
            state[key] = values[key]
    if isinstance(block, EventBlock):
        state["start"], state["start-time"] = _date_and_time(block.start)
        state["end"], state["end-time"] = _date_and_time(block.end)
        state["organisers"] = "\n".join(block.organisers)
        state["formats"] = [
            {"kind": f.kind, "title": f.title, "led_by": f.led_by or ""} for f in block.formats
        ]
    if block.type == "thanks":
        state["partners"] = [_partner_state(p) for p in values["partners"]]
    return state


def _partner_state(partner: Mapping[str, Any]) -> State:
    role = str(partner["role"])
    known = role in PARTNER_ROLES
    return {
        "name": partner["name"],
        "role": role if known else OTHER_ROLE,
        "role_label": "" if known else role,
        "url": partner.get("url") or "",
    }


def _date_and_time(value: date | datetime | None) -> tuple[str, str]:
    if value is None:
        return "", ""
    if isinstance(value, datetime):
        local = value.astimezone(LOCAL_TZ)
        return local.date().isoformat(), local.strftime("%H:%M")
    return value.isoformat(), ""


def local_input(value: datetime | None) -> str:
    """A moment as a ``datetime-local`` value in Europe/Berlin."""
    return value.astimezone(LOCAL_TZ).strftime("%Y-%m-%dT%H:%M") if value else ""


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def from_post(form: MultiMapping[Any]) -> State:
    """What was typed, as typed (capped in number, not in content: the model judges that)."""
    state = blank()
    for name in TEXT_FIELDS:
        state[name] = _value(form, name)
    for name in CHECKBOXES:
        state[name] = name in form
    state["topics"] = [t for t in form.getall("topics", []) if isinstance(t, str)]
    state["blocks"] = []
    for index in range(MAX_BLOCKS):
        kind = _value(form, f"blocks-{index}-type")
        if kind not in BLOCK_TYPES:
            break
        state["blocks"].append(_posted_block(form, f"blocks-{index}-", kind))
    return state


def _posted_block(form: Mapping[str, Any], prefix: str, kind: str) -> State:
    block: State = {"type": kind}
    for name in BLOCK_FIELDS[kind]:
        block[name] = _value(form, prefix + name)
    items = ITEMS_OF.get(kind)
    if items:
        block[items] = []
        for index in range(MAX_ITEMS):
            item_prefix = f"{prefix}{items}-{index}-"
            if f"{item_prefix}{ITEM_FIELDS[items][0]}" not in form:
                break
            block[items].append({n: _value(form, item_prefix + n) for n in ITEM_FIELDS[items]})
    return block


def _value(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


# --- buttons that change the form's shape -------------------------------------------------------


def apply(state: State, action: str) -> tuple[State, str | None]:
    """Add, remove or move a block, format or partner; the state and the id to focus."""
    if action.startswith("add-") and action[4:] in BLOCK_TYPES:
        if len(state["blocks"]) < MAX_BLOCKS:
            state["blocks"].append(blank_block(action[4:]))
        return state, f"blocks-{len(state['blocks']) - 1}"
    if action == "remove-image":
        state |= {"image-src": "", "image-width": "", "image-height": ""}
        return state, "image-file"
    match = _ACTION.match(action)
    if match is None:
        return state, None
    verb, kind, first, second = match.groups()
    if kind is None and first is not None:
        focus = _change(state["blocks"], verb, int(first), lambda: None)
        return state, None if focus is None else f"blocks-{focus}"
    if kind is None or first is None or int(first) >= len(state["blocks"]):
        return state, None
    block, items = state["blocks"][int(first)], f"{kind}s"
    if block.get(items) is None:
        return state, None
    position = len(block[items]) if verb == "add" else int(second or 0)
    focus = _change(block[items], verb, position, lambda: blank_item(items))
    return state, None if focus is None else f"blocks-{first}-{items}-{focus}"


def _change(
    entries: list[State], verb: str, index: int, new: Callable[[], State | None]
) -> int | None:
    if verb == "add":
        item = new()
        if item is None or len(entries) >= MAX_ITEMS:
            return None
        entries.append(item)
        return len(entries) - 1
    if not 0 <= index < len(entries):
        return None
    if verb == "remove":
        del entries[index]
        return min(index, len(entries) - 1) if entries else None
    target = index - 1 if verb == "up" else index + 1
    if not 0 <= target < len(entries):
        return index
    entries[index], entries[target] = entries[target], entries[index]
    return target


# --- from the state to the model ------------------------------------------------------------------


def to_data(state: State) -> dict[str, Any]:
    """The dict the content model expects. Required fields are always given (maybe empty, so the
    model says what is missing); empty optional ones are left out."""
    data: dict[str, Any] = {
        "title": state["title"],
        "language": state["language"],
        "archive": state["archive"],
        "topics": list(state["topics"]),
        "hashtags": [tag for tag in _SPLIT_TAGS.split(state["hashtags"]) if tag],
        "channels": _channels(state),
        "blocks": [_block_data(block) for block in state["blocks"]],
    }
    for name in ("summary", "link", "publish_at", "expires_at", "translation_group"):
        _optional(data, name, state[name])
    if state["image-src"].strip():
        image: dict[str, Any] = {"src": state["image-src"], "alt": state["image-alt"]}
        for side in ("width", "height"):
            if state[f"image-{side}"].isdigit():
                image[side] = int(state[f"image-{side}"])
        data["image"] = image
    return data


def _channels(state: State) -> dict[str, Any]:
    email: dict[str, Any] = {}
    _optional(email, "subject", state["channels-email-subject"])
    _optional(email, "preheader", state["channels-email-preheader"])
    mastodon: dict[str, Any] = {"visibility": state["channels-mastodon-visibility"]}
    _optional(mastodon, "content_warning", state["channels-mastodon-content_warning"])
    telegram: dict[str, Any] = {
        "link_preview": state["channels-telegram-link_preview"],
        "prefer_small_media": state["channels-telegram-prefer_small_media"],
        "show_above_text": state["channels-telegram-show_above_text"],
    }
    _optional(telegram, "preview_url", state["channels-telegram-preview_url"])
    return {"email": email, "mastodon": mastodon, "telegram": telegram}


_REQUIRED = {
    "event": ("name",),
    "quote": ("speaker", "text"),
    "thanks": (),
    "text": ("text",),
    "link": ("label", "url"),
}


def _block_data(block: State) -> dict[str, Any]:
    kind = block["type"]
    data: dict[str, Any] = {"type": kind}
    for name in BLOCK_FIELDS[kind]:
        if name in _REQUIRED[kind]:
            data[name] = block[name]
        elif name not in ("start-time", "end-time", "organisers"):
            _optional(data, name, block[name])
    if kind == "event":
        for side in ("start", "end"):
            _optional(data, side, _moment(block[side], block[f"{side}-time"]))
        data["organisers"] = [line for line in block["organisers"].splitlines() if line.strip()]
        data["formats"] = [_format_data(f) for f in block["formats"]]
    if kind == "thanks":
        data["partners"] = [_partner_data(p) for p in block["partners"]]
    return data


def _moment(day: str, time: str) -> str:
    """A date input and a time input as one value: ``2025-11-05`` or ``2025-11-05T18:00``."""
    day, time = day.strip(), time.strip()
    return f"{day}T{time}" if day and time else day or time


def _format_data(item: State) -> dict[str, Any]:
    data = {"kind": item["kind"], "title": item["title"]}
    _optional(data, "led_by", item["led_by"])
    return data


def _partner_data(item: State) -> dict[str, Any]:
    role = item["role_label"] if item["role"] == OTHER_ROLE else item["role"]
    data = {"name": item["name"], "role": role}
    _optional(data, "url", item["url"])
    return data


def _optional(data: dict[str, Any], name: str, value: str) -> None:
    if value.strip():
        data[name] = value
