"""Load announcement files (YAML or JSON) into validated objects.

Every problem is reported at once, each with its field path and, where the file tells, its line.
PyYAML's node marks give the lines; JSON is parsed for values by ``json`` and for lines by the YAML
composer (JSON is, for the documents we accept, valid YAML).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bzi_broadcast.content.model import BLOCK_TYPES, Announcement
from bzi_broadcast.errors import ContentError, Problem
from bzi_broadcast.files import FileRefused, read_capped
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _

Location = tuple[str | int, ...]
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 50  # levels of lists and objects; an announcement needs about 6
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # a string (skipped) or a bracket


class _Loader(yaml.SafeLoader):
    """Safe YAML as announcements need it, and no more.

    No implicit timestamps: dates stay strings for pydantic to judge. No aliases: a 362-byte alias
    bomb expands into gigabytes, and an announcement never needs to repeat a value by reference.
    At most ``MAX_DEPTH`` levels (the composer recurses per level). No key twice in one mapping:
    PyYAML would silently keep the last one.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            alias = self.peek_event()  # type: ignore[no-untyped-call]
            problem = _(
                "YAML-Verweise wie „*{name}“ werden nicht angenommen; bitte den Wert ausschreiben"
            )
            raise _composer_error(problem.format(name=alias.anchor), alias.start_mark)
        if self._depth >= MAX_DEPTH:
            deeper = self.peek_event()  # type: ignore[no-untyped-call]
            raise _composer_error(_too_deep(), deeper.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        """``[`` and ``{`` counted as the scanner meets them: refused before its look-ahead for
        keys (up to 1,024 characters, per open bracket) turns 100,000 of them into minutes."""
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, _too_deep(), self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        first_lines: dict[object, int] = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in first_lines:
                message = _duplicate(key.value, first_lines[key.value])
                raise _composer_error(message, key.start_mark)
            first_lines[key.value] = key.start_mark.line + 1
        return node


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _composer_error(problem: str, mark: yaml.Mark) -> yaml.composer.ComposerError:
    return yaml.composer.ComposerError(None, None, problem, mark)


def _too_deep() -> str:
    return _("zu tief verschachtelt (höchstens {depth} Ebenen)").format(depth=MAX_DEPTH)


def _duplicate(key: object, first_line: int | None) -> str:
    if first_line is None:
        return _("das Feld „{key}“ kommt mehrfach vor").format(key=key)
    return _("das Feld „{key}“ kommt mehrfach vor (zuerst in Zeile {line})").format(
        key=key, line=first_line
    )


def load_announcement(path: Path | str) -> Announcement:
    """Read and validate one announcement file; raise ``ContentError`` naming every problem."""
    path = Path(path)
    fmt = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}.get(path.suffix.lower())
    if fmt is None:
        problem = _("unbekanntes Dateiformat „{suffix}“ (erwartet .yaml, .yml oder .json)")
        raise _error(str(path), problem.format(suffix=path.suffix))
    try:
        raw = read_capped(path, MAX_FILE_BYTES)
    except FileRefused as exc:
        raise _error(str(path), exc.message) from None
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
        raise ContentError(_problems(exc.errors(), data, lines or {}), source=source) from None


def _decode(raw: bytes | str, source: str | None) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = _("die Datei ist nicht UTF-8-kodiert (Byte {offset})")
        raise _error(source, message.format(offset=exc.start)) from None


def _parse_yaml(text: str, source: str | None) -> tuple[Any, dict[Location, int]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        message = _("kein gültiges YAML: {problem}").format(problem=exc.problem or exc)
        raise ContentError([Problem(path="", message=message, line=line)], source=source) from None
    except yaml.YAMLError as exc:
        raise _error(source, _("kein gültiges YAML: {problem}").format(problem=exc)) from None
    finally:
        loader.dispose()
    return data, dict(_node_lines(node, ())) if node is not None else {}


def _parse_json(text: str, source: str | None) -> tuple[Any, dict[Location, int]]:
    _check_json_depth(text, source)
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        message = _("kein gültiges JSON: {problem}").format(problem=exc.msg)
        raise ContentError(
            [Problem(path="", message=message, line=exc.lineno)], source=source
        ) from None
    except _DuplicateKey as exc:
        first, again = _json_key_lines(text, exc.key)
        message = _("kein gültiges JSON: {problem}").format(problem=_duplicate(exc.key, first))
        raise ContentError([Problem(path="", message=message, line=again)], source=source) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return data, {}  # valid JSON the YAML composer rejects: values without line numbers
    return data, dict(_node_lines(node, ())) if node is not None else {}


def _check_json_depth(text: str, source: str | None) -> None:
    """Refuse nesting beyond ``MAX_DEPTH`` before ``json`` recurses into it (RecursionError)."""
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                message = _("kein gültiges JSON: {problem}").format(problem=_too_deep())
                line = text.count("\n", 0, token.start()) + 1
                raise ContentError([Problem(path="", message=message, line=line)], source=source)
        elif bracket in "]}":
            depth -= 1


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _json_key_lines(text: str, key: str) -> tuple[int | None, int | None]:
    """The lines of the first two places that look like ``"key":`` (for the message only)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
    lines = [text.count("\n", 0, found.start()) + 1 for found in pattern.finditer(text)][:2]
    return (lines[0], lines[1]) if len(lines) == 2 else (None, None)


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


def _problems(
    errors: list[ErrorDetails], data: Any, lines: Mapping[Location, int]
) -> list[Problem]:
    """One problem per field: union alternatives merged, follow-on errors of parents dropped."""
    located = [(_data_location(error["loc"], data), error) for error in errors]
    by_location: dict[Location, ErrorDetails] = {}
    for location, error in located:
        if location not in by_location or _is_length(error):
            by_location[location] = error  # a value too long for any alternative: say that
    return [
        Problem(
            path=dotted_path(location), message=error_message(error), line=_line(location, lines)
        )
        for location, error in by_location.items()
        if not any(_is_below(other, location) for other in by_location)
    ]


def _is_length(error: ErrorDetails) -> bool:
    return error["type"] in ("string_too_long", "too_long")


def _is_below(location: Location, ancestor: Location) -> bool:
    return len(location) > len(ancestor) and location[: len(ancestor)] == ancestor


def _line(location: Location, lines: Mapping[Location, int]) -> int | None:
    return next((lines[loc] for loc in _ancestors(location) if loc in lines), None)


def _data_location(loc: Iterable[str | int], data: Any) -> Location:
    """Follow pydantic's error location through the data, keeping only the parts found there.

    Pydantic adds parts that are not in the document: the union tag of a block (its type) and
    validator names. A missing field is kept: it is the last part, named on an existing object.
    """
    location: list[str | int] = []
    node = data
    tag_skipped_at = -1  # a text block's field "text" follows its tag "text": skip only one
    for part in loc:
        if tag_skipped_at != len(location) and _is_union_tag(node, part, location):
            tag_skipped_at = len(location)
            continue
        if _contains(node, part):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and _is_field_name(node, part):
            node = None
        else:
            continue
        location.append(part)
    return tuple(location)


def _is_union_tag(node: Any, part: str | int, location: list[str | int]) -> bool:
    """A block's type, which pydantic puts in the location right after the block's index."""
    return (
        bool(location)
        and isinstance(location[-1], int)
        and isinstance(node, dict)
        and (node.get("type") == part)
    )


def _contains(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _is_field_name(node: dict[str, Any], part: str) -> bool:
    return part != node.get("type") and part.isidentifier()


def _ancestors(location: Location) -> Iterator[Location]:
    for end in range(len(location), -1, -1):
        yield location[:end]


def dotted_path(location: Sequence[str | int]) -> str:
    """``blocks[1].speaker``: the field path as problems name it."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


_BAD_DATE = N_("kein gültiges Datum (erwartet JJJJ-MM-TT oder JJJJ-MM-TT HH:MM)")
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
    "date_from_datetime_parsing": N_(
        "kein gültiges Datum (erwartet JJJJ-MM-TT oder JJJJ-MM-TT HH:MM)"
    ),
    "date_parsing": N_("kein gültiges Datum (erwartet JJJJ-MM-TT oder JJJJ-MM-TT HH:MM)"),
    "datetime_parsing": N_("kein gültiger Zeitpunkt (erwartet JJJJ-MM-TT HH:MM)"),
    "datetime_from_date_parsing": N_("kein gültiger Zeitpunkt (erwartet JJJJ-MM-TT HH:MM)"),
    "union_tag_not_found": N_("das Feld type fehlt"),
    "string_pattern_mismatch": N_("enthält unzulässige Zeichen oder Werte"),
    "greater_than_equal": N_("zu klein"),
    "less_than_equal": N_("zu groß"),
    "timezone_aware": N_("der Zeitpunkt braucht eine Zeitzone (z. B. +01:00)"),
}


def error_message(error: ErrorDetails, fallback: str | None = None) -> str:
    """A German (or English) message for one pydantic error; ``fallback`` for unknown kinds."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "union_tag_invalid":
        return _("unbekannter Blocktyp „{tag}“ (erlaubt: {allowed})").format(
            tag=ctx.get("tag"), allowed=", ".join(BLOCK_TYPES)
        )
    if kind in ("enum", "literal_error"):
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return _("ungültiger Wert „{value}“ (erlaubt: {expected})").format(
            value=error.get("input"), expected=expected
        )
    if kind.startswith(("date", "datetime")) and "outside expected range" in str(ctx.get("error")):
        return _("„{value}“: dieses Datum oder diese Uhrzeit gibt es nicht").format(
            value=error.get("input")
        )
    if kind == "string_too_long" or (kind == "too_long" and isinstance(error["input"], str)):
        return _("zu lang (höchstens {max} Zeichen)").format(max=ctx.get("max_length"))
    if kind == "too_long":
        return _("zu viele Einträge (höchstens {max})").format(max=ctx.get("max_length"))
    if kind == "value_error":
        return _(str(ctx.get("error", error["msg"])))
    if kind in _MESSAGES:
        return _(_MESSAGES[kind])
    return fallback or str(error["msg"])


def _error(source: str | None, message: str) -> ContentError:
    return ContentError([Problem(path="", message=message)], source=source)
