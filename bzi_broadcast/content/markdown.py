"""A small, safe Markdown subset: paragraphs, emphasis, links and lists.

Parsing uses markdown-it-py's CommonMark "zero" preset with only those rules enabled, so raw HTML,
headings, code and images stay literal text. The result is a tree of frozen nodes that each channel
renders in its own syntax (``bzi_broadcast.render.markup``); nothing user-written is ever passed
through as markup.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token

_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_parser = MarkdownIt("zero").enable(["emphasis", "link", "list", "newline", "autolink", "escape"])


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class LineBreak:
    pass


@dataclass(frozen=True, slots=True)
class Strong:
    children: tuple[Inline, ...]


@dataclass(frozen=True, slots=True)
class Emphasis:
    children: tuple[Inline, ...]


@dataclass(frozen=True, slots=True)
class Link:
    href: str
    children: tuple[Inline, ...]


Inline = Text | LineBreak | Strong | Emphasis | Link


@dataclass(frozen=True, slots=True)
class Paragraph:
    children: tuple[Inline, ...]


@dataclass(frozen=True, slots=True)
class ListBlock:
    ordered: bool
    start: int
    items: tuple[tuple[Node, ...], ...]


Node = Paragraph | ListBlock


@lru_cache(maxsize=2048)
def parse(source: str) -> tuple[Node, ...]:
    """Parse ``source``; the result is cached because announcements render many times."""
    tokens = iter(_parser.parse(source))
    return tuple(_blocks(tokens, closing=None))


def _blocks(tokens: Iterator[Token], closing: str | None) -> Iterator[Node]:
    for token in tokens:
        if token.type == closing:
            return
        if token.type == "inline":
            yield Paragraph(_inline(token.children or []))
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            yield _list(token, tokens)


def _list(opening: Token, tokens: Iterator[Token]) -> ListBlock:
    closing = opening.type.replace("_open", "_close")
    items: list[tuple[Node, ...]] = []
    for token in tokens:
        if token.type == closing:
            break
        if token.type == "list_item_open":
            items.append(tuple(_blocks(tokens, closing="list_item_close")))
    start = int(opening.attrGet("start") or 1)
    return ListBlock(ordered=opening.type.startswith("ordered"), start=start, items=tuple(items))


def _inline(tokens: Sequence[Token]) -> tuple[Inline, ...]:
    stack: list[tuple[str, str, list[Inline]]] = [("", "", [])]
    for token in tokens:
        if token.type in ("strong_open", "em_open", "link_open"):
            stack.append((token.type, str(token.attrGet("href") or ""), []))
        elif token.type in ("strong_close", "em_close", "link_close"):
            kind, href, children = stack.pop()
            stack[-1][2].extend(_wrap(kind, href, tuple(children)))
        elif token.type in ("softbreak", "hardbreak"):
            stack[-1][2].append(LineBreak())
        elif token.content:
            stack[-1][2].append(Text(token.content))
    return tuple(stack[0][2])


def _wrap(kind: str, href: str, children: tuple[Inline, ...]) -> tuple[Inline, ...]:
    if kind == "strong_open":
        return (Strong(children),)
    if kind == "em_open":
        return (Emphasis(children),)
    if href.lower().startswith(_SAFE_SCHEMES):
        return (Link(href, children),)
    return children  # a link to anything but http(s)/mailto keeps only its label


def plain_text(nodes: Sequence[Node | Inline]) -> str:
    """The visible words, for length checks and summaries."""
    parts: list[str] = []
    for node in nodes:
        match node:
            case Text(text=text):
                parts.append(text)
            case LineBreak():
                parts.append("\n")
            case (
                Strong(children=c) | Emphasis(children=c) | Link(children=c) | Paragraph(children=c)
            ):
                parts.append(plain_text(c))
            case ListBlock(items=items):
                parts.append("\n".join(plain_text(item) for item in items))
    return "".join(parts)
