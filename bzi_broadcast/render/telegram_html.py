"""Telegram's HTML parse mode: parse as the Bot API does, measure, and split messages.

Parsing follows https://core.telegram.org/bots/api#html-style and tdlib's ``parse_html``:
supported tags only (anything else: "Unsupported start tag"), properly nested, numeric entities
and ``&lt; &gt; &amp; &quot;``; an ``&`` that starts no known entity stays literal text. Lengths
are counted after entity parsing, in UTF-16 code units. The local Telegram API server uses the
same parser, so a message our renderer produces is judged exactly as it will be in production.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass

import regex

ALLOWED_TAGS: frozenset[str] = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "tg-emoji": "custom_emoji",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY = regex.compile(r"&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([a-zA-Z]+));")
_TAG = regex.compile(
    r"<(/?)([a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>]*))?)*)\s*(>?)"
)
_ATTRIBUTE = regex.compile(r"([a-zA-Z-]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]*)))?")
_TOKEN = regex.compile(r"<[^>]*>|&[#a-zA-Z0-9]+;|[^<&]+|[<&]")
_SENTENCE_END = regex.compile(r"(?<=[.!?…][“”»«‘’‚„\"')]*)\s+")


class TelegramHTMLError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"can't parse entities: {message}")
        self.offset = offset


@dataclass(frozen=True, kw_only=True)
class MessageEntity:
    type: str
    offset: int
    length: int
    url: str | None = None
    language: str | None = None
    custom_emoji_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ParsedText:
    text: str
    entities: tuple[MessageEntity, ...]


@dataclass(frozen=True, kw_only=True)
class _Open:
    name: str
    attributes: dict[str, str]
    start: int  # UTF-16 offset in the output text
    raw: str  # the tag as written, to reopen it after a split


def escape(text: str) -> str:
    return html.escape(text, quote=True).replace("&#x27;", "&#39;")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse(source: str) -> ParsedText:
    """Text and entities as Telegram would store them; ``TelegramHTMLError`` where it refuses."""
    out: list[str] = []
    length = 0
    stack: list[_Open] = []
    entities: list[MessageEntity] = []
    position = 0
    while position < len(source):
        char = source[position]
        if char == "<":
            position = _tag(source, position, stack, entities, length)
            continue
        if char == "&" and (match := _ENTITY.match(source, position)):
            decoded = _decode_entity(match)
            if decoded is not None:
                out.append(decoded)
                length += utf16_length(decoded)
                position = match.end()
                continue
        end = _next_special(source, position + 1)
        chunk = source[position:end]
        out.append(chunk)
        length += utf16_length(chunk)
        position = end
    if stack:
        raise TelegramHTMLError(
            f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"',
            _byte_offset(source, len(source)),
        )
    return _trimmed("".join(out), entities)


def _next_special(source: str, start: int) -> int:
    indices = [i for i in (source.find("<", start), source.find("&", start)) if i >= 0]
    return min(indices) if indices else len(source)


def _decode_entity(match: regex.Match[str]) -> str | None:
    decimal, hexadecimal, name = match.groups()
    if name is not None:
        return _NAMED.get(name)
    code = int(decimal) if decimal is not None else int(hexadecimal, 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code)


def _tag(
    source: str, position: int, stack: list[_Open], entities: list[MessageEntity], length: int
) -> int:
    match = _TAG.match(source, position)
    offset = _byte_offset(source, position)
    assert match is not None  # the pattern matches any "<"
    tag_end: int = match.end()
    closing, name, attributes, end = match.groups()
    name = name.lower()
    if not closing:
        if name not in ALLOWED_TAGS:
            raise TelegramHTMLError(
                f'Unsupported start tag "{name}" at byte offset {offset}', offset
            )
        if not end:
            raise TelegramHTMLError(f"Unclosed start tag at byte offset {offset}", offset)
        stack.append(
            _Open(name=name, attributes=_attributes(attributes), start=length, raw=match.group(0))
        )
        _check_open(stack, offset)
        return tag_end
    if not end:
        raise TelegramHTMLError(f"Unclosed end tag at byte offset {offset}", offset)
    if not stack:
        raise TelegramHTMLError(f"Unexpected end tag at byte offset {offset}", offset)
    top = stack.pop()
    if top.name != name:
        raise TelegramHTMLError(
            f'Unmatched end tag at byte offset {offset}, expected "</{top.name}>", '
            f'found "</{name}>"',
            offset,
        )
    entity = _entity(top, length)
    if entity is not None:
        entities.append(entity)
    return tag_end


def _attributes(raw: str) -> dict[str, str]:
    found = {}
    for match in _ATTRIBUTE.finditer(raw):
        value = next((v for v in match.groups()[1:] if v is not None), "")
        found[match.group(1).lower()] = html.unescape(value)
    return found


def _check_open(stack: list[_Open], offset: int) -> None:
    current = stack[-1]
    if current.name == "span" and current.attributes.get("class") != "tg-spoiler":
        raise TelegramHTMLError(
            f'Tag "span" must have class "tg-spoiler" at byte offset {offset}', offset
        )
    outer = [o.name for o in stack[:-1]]
    if current.name in ("pre", "blockquote") and current.name in outer:
        raise TelegramHTMLError(
            f'Tag "{current.name}" can\'t be nested at byte offset {offset}', offset
        )


def _entity(tag: _Open, end: int) -> MessageEntity | None:
    if end == tag.start:
        return None
    kind = _ENTITY_TYPES[tag.name]
    if tag.name == "blockquote" and "expandable" in tag.attributes:
        kind = "expandable_blockquote"
    language = tag.attributes.get("class", "").removeprefix("language-") or None
    return MessageEntity(
        type=kind,
        offset=tag.start,
        length=end - tag.start,
        url=tag.attributes.get("href") if tag.name == "a" else None,
        language=language if tag.name == "code" else None,
        custom_emoji_id=tag.attributes.get("emoji-id") if tag.name == "tg-emoji" else None,
    )


def _trimmed(text: str, entities: list[MessageEntity]) -> ParsedText:
    """Telegram strips leading and trailing whitespace; entities move and shrink with it."""
    stripped = text.strip()
    shift = utf16_length(text[: len(text) - len(text.lstrip())])
    limit = utf16_length(stripped)
    kept = []
    for e in sorted(entities, key=lambda e: (e.offset, -e.length)):
        start, stop = max(0, e.offset - shift), min(limit, e.offset + e.length - shift)
        if stop > start:
            kept.append(
                MessageEntity(
                    type=e.type,
                    offset=start,
                    length=stop - start,
                    url=e.url,
                    language=e.language,
                    custom_emoji_id=e.custom_emoji_id,
                )
            )
    return ParsedText(text=stripped, entities=tuple(kept))


def _byte_offset(source: str, position: int) -> int:
    return len(source[:position].encode("utf-8"))


def visible_length(source: str) -> int:
    return utf16_length(parse(source).text)


# --- splitting ----------------------------------------------------------------------------------


def split_message(source: str, *, limit: int = 4096) -> list[str]:
    """Pieces of valid Telegram HTML, each at most ``limit`` units, split at paragraphs first."""
    pieces = [p for p in (_close_and_reopen(source, limit)) if parse(p).text]
    return pieces or ([source] if parse(source).text else [])


def split_caption(
    source: str, *, caption_limit: int = 1024, limit: int = 4096
) -> tuple[str, list[str]]:
    """A photo caption of at most ``caption_limit`` units, and follow-up messages for the rest."""
    pieces = split_message(source, limit=caption_limit)
    if not pieces:
        return "", []
    caption, rest = pieces[0], _rejoin(pieces[1:])
    return caption, split_message(rest, limit=limit) if rest else []


def _rejoin(pieces: list[str]) -> str:
    return "\n\n".join(pieces)


@dataclass
class _Token:
    raw: str
    text: str  # visible text (decoded)
    kind: str  # "text", "open", "close"
    name: str = ""


def _tokens(source: str) -> Iterator[_Token]:
    for match in _TOKEN.finditer(source):
        raw = match.group(0)
        if raw.startswith("</"):
            yield _Token(raw=raw, text="", kind="close", name=raw[2:-1].strip().lower())
        elif raw.startswith("<") and len(raw) > 1:
            name = regex.match(r"<([a-zA-Z0-9-]+)", raw)
            yield _Token(raw=raw, text="", kind="open", name=name.group(1).lower() if name else "")
        elif raw.startswith("&") and len(raw) > 1:
            yield _Token(raw=raw, text=html.unescape(raw), kind="text")
        else:
            yield from _text_tokens(raw)


def _text_tokens(raw: str) -> Iterator[_Token]:
    """Plain text in break classes: paragraph breaks, sentence ends, spaces, single graphemes."""
    for part in regex.split(r"(\n\n+)", raw):
        if not part:
            continue
        if part.startswith("\n\n"):
            yield _Token(raw=part, text=part, kind="break-paragraph")
            continue
        for sentence in regex.split(r"((?<=[.!?…][“”»«‘’‚„\"')]*)\s+)", part):
            if sentence and sentence.isspace():
                yield _Token(raw=sentence, text=sentence, kind="break-sentence")
            elif sentence:
                for word in regex.split(r"(\s+)", sentence):
                    if word and word.isspace():
                        yield _Token(raw=word, text=word, kind="break-word")
                    elif word:
                        yield _Token(raw=word, text=word, kind="text")


_BREAK_RANK = {"break-paragraph": 3, "break-sentence": 2, "break-word": 1}


def _close_and_reopen(source: str, limit: int) -> list[str]:
    """Greedy split: take the longest prefix that fits and ends at the best break available."""
    tokens = list(_tokens(source))
    pieces: list[str] = []
    start = 0
    reopen: list[_Token] = []
    while start < len(tokens):
        end, stack = _best_end(tokens, start, reopen, limit)
        body = "".join(t.raw for t in reopen) + "".join(t.raw for t in tokens[start:end])
        closing = "".join(f"</{t.name}>" for t in reversed(stack))
        pieces.append(body + closing)
        reopen = stack
        start = end
    return pieces


def _best_end(
    tokens: list[_Token], start: int, reopen: list[_Token], limit: int
) -> tuple[int, list[_Token]]:
    stack = list(reopen)
    visible = ""
    best: tuple[int, int, list[_Token]] | None = None  # (rank, end, stack)
    position = start
    while position < len(tokens):
        token = tokens[position]
        if token.kind == "open":
            stack.append(token)
        elif token.kind == "close" and stack:
            stack.pop()
        elif token.kind.startswith("break"):
            rank = _BREAK_RANK[token.kind]
            if best is None or rank >= best[0]:
                best = (rank, position + 1, list(stack))
            visible += token.text
        elif token.kind == "text":
            candidate = visible + token.text
            if utf16_length(candidate.strip()) > limit:
                break
            visible = candidate
        position += 1
    else:
        return len(tokens), stack
    if best is not None and visible.strip():
        return best[1], best[2]
    room = limit - utf16_length(visible.strip()) - 1
    first = regex.match(r"\X", tokens[position].text)
    if visible.strip() and first and utf16_length(first.group(0)) > room:
        return position, stack  # not even one grapheme (an emoji sequence) fits: end here
    return _split_word(tokens, position, room), stack


def _split_word(tokens: list[_Token], position: int, room: int) -> int:
    """A word longer than the room left: cut it at grapheme boundaries into two tokens."""
    token = tokens[position]
    head = ""
    for grapheme in regex.findall(r"\X", token.text):
        if utf16_length(head + grapheme) > max(room, 1) and head:
            break
        head += grapheme
    tail = token.text[len(head) :]
    tokens[position : position + 1] = [
        _Token(raw=escape(head), text=head, kind="text"),
        _Token(raw=escape(tail), text=tail, kind="text"),
    ]
    return position + 1
