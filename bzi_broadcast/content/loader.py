"""Load announcement files (YAML or JSON) into validated objects.

Every problem is reported at once, each with its field path and, where the file tells, its line.
PyYAML's node marks give the lines; JSON is parsed for values by ``json`` and for lines by the YAML
composer (JSON is, for the documents we accept, valid YAML).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bzi_broadcast.content.model import BLOCK_TYPES, Announcement
from bzi_broadcast.errors import ContentError, Problem
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _

Location = tuple[str | int, ...]
MAX_FILE_BYTES = 1_000_000


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: dates stay strings for pydantic to judge."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_announcement(path: Path | str) -> Announcement:
    """Read and validate one announcement file; raise ``ContentError`` naming every problem."""
    path = Path(path)
    fmt = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}.get(path.suffix.lower())
    if fmt is None:
        problem = _("unbekanntes Dateiformat „{suffix}“ (erwartet .yaml, .yml oder .json)")
        raise _error(str(path), problem.format(suffix=path.suffix))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _error(str(path), _("Datei kann nicht gelesen werden: {reason}").format(
            reason=exc.strerror or exc)) from exc
    return parse_announcement(raw, fmt=fmt, source=str(path))


def parse_announcement(raw: bytes | str, *, fmt: str, source: str | None = None) -> Announcement:
    """Validate announcement text in ``fmt`` ("yaml" or "json")."""
    if len(raw) > MAX_FILE_BYTES:
        raise _error(source, _("die Datei ist größer als 1 MB"))
    text = _decode(raw, source)
    data, lines = _parse_json(text, source) if fmt == "json" else _parse_yaml(text, source)
    return validate_announcement(data, lines=lines, source=source)


def validate_announcement(
    data: Any, *, lines: Mapping[Location, int] | None = None, source: str | None = None
) -> Announcement:
    """Validate already-parsed data (from a file, a form or the API)."""
    if not isinstance(data, dict):
        raise _error(source, _("erwartet wird ein Objekt mit Feldern wie title und blocks"))
    try:
        return Announcement.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, data, lines or {}) for error in exc.errors()]
        raise ContentError(problems, source=source) from None


def _decode(raw: bytes | str, source: str | None) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = _("die Datei ist nicht UTF-8-kodiert (Byte {offset})")
        raise _error(source, message.format(offset=exc.start)) from None


def _parse_yaml(text: str, source: str | None) -> tuple[Any, dict[Location, int]]:
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        message = _("kein gültiges YAML: {problem}").format(problem=exc.problem or exc)
        raise ContentError([Problem(path="", message=message, line=line)], source=source) from None
    except yaml.YAMLError as exc:
        raise _error(source, _("kein gültiges YAML: {problem}").format(problem=exc)) from None
    return data, dict(_node_lines(node, ())) if node is not None else {}


def _parse_json(text: str, source: str | None) -> tuple[Any, dict[Location, int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        message = _("kein gültiges JSON: {problem}").format(problem=exc.msg)
        raise ContentError([Problem(path="", message=message, line=exc.lineno)], source=source) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return data, {}  # valid JSON the YAML composer rejects: values without line numbers
    return data, dict(_node_lines(node, ())) if node is not None else {}


def _node_lines(node: yaml.Node, location: Location) -> Iterator[tuple[Location, int]]:
    yield location, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*location, str(key.value))
            yield child, key.start_mark.line + 1
            yield from ((loc, line) for loc, line in _node_lines(value, child) if loc != child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _node_lines(item, (*location, index))


def _problem(error: ErrorDetails, data: Any, lines: Mapping[Location, int]) -> Problem:
    location = _data_location(error["loc"], data)
    line = next((lines[loc] for loc in _ancestors(location) if loc in lines), None)
    return Problem(path=_dotted(location), message=_message(error), line=line)


def _data_location(loc: Iterable[str | int], data: Any) -> Location:
    """Drop the parts pydantic adds (union tags, validator names) that are not in the data."""
    location: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif part in ("function-after[_check_range()]",) or not _could_be_missing(node, part):
            continue
        location.append(part)
    return tuple(location)


def _could_be_missing(node: Any, part: str | int) -> bool:
    return isinstance(node, dict) and isinstance(part, str) and not part.startswith(
        ("function-", "lax-", "strict-")
    ) and part not in BLOCK_TYPES


def _ancestors(location: Location) -> Iterator[Location]:
    for end in range(len(location), -1, -1):
        yield location[:end]


def _dotted(location: Location) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


_MESSAGES = {
    "missing": N_("Pflichtfeld fehlt"),
    "extra_forbidden": N_("unbekanntes Feld"),
    "string_type": N_("erwartet wird Text"),
    "bool_type": N_("erwartet wird true oder false"),
    "bool_parsing": N_("erwartet wird true oder false"),
    "int_type": N_("erwartet wird eine ganze Zahl"),
    "int_parsing": N_("erwartet wird eine ganze Zahl"),
    "tuple_type": N_("erwartet wird eine Liste"),
    "list_type": N_("erwartet wird eine Liste"),
    "model_type": N_("erwartet wird ein Objekt mit Feldern"),
    "model_attributes_type": N_("erwartet wird ein Objekt mit Feldern"),
    "dict_type": N_("erwartet wird ein Objekt mit Feldern"),
    "too_short": N_("darf nicht leer sein"),
    "date_from_datetime_parsing": N_("kein gültiges Datum (erwartet JJJJ-MM-TT)"),
    "date_parsing": N_("kein gültiges Datum (erwartet JJJJ-MM-TT)"),
    "datetime_parsing": N_("kein gültiger Zeitpunkt (erwartet JJJJ-MM-TT HH:MM)"),
    "datetime_from_date_parsing": N_("kein gültiger Zeitpunkt (erwartet JJJJ-MM-TT HH:MM)"),
    "union_tag_not_found": N_("das Feld type fehlt"),
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "union_tag_invalid":
        return _("unbekannter Blocktyp „{tag}“ (erlaubt: {allowed})").format(
            tag=ctx.get("tag"), allowed=", ".join(BLOCK_TYPES))
    if kind == "enum" or kind == "literal_error":
        return _("ungültiger Wert (erlaubt: {expected})").format(expected=ctx.get("expected"))
    if kind == "string_too_long":
        return _("zu lang (höchstens {max} Zeichen)").format(max=ctx.get("max_length"))
    if kind == "value_error":
        return _(str(ctx.get("error", error["msg"])))
    if kind in _MESSAGES:
        return _(_MESSAGES[kind])
    return str(error["msg"])


def _error(source: str | None, message: str) -> ContentError:
    return ContentError([Problem(path="", message=message)], source=source)
