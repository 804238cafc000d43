"""Render the Markdown subset's node tree in each channel's syntax."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from bzi_broadcast.content.markdown import (
    Emphasis,
    Inline,
    LineBreak,
    Link,
    Node,
    Paragraph,
    Strong,
    Text,
    parse,
)


def to_html(source: str, *, paragraph_style: str = "") -> Markup:
    """Email/web HTML; every text run escaped."""
    html = "\n".join(_html_block(node, paragraph_style) for node in parse(source))
    return Markup(html)  # noqa: S704 - every text run was escaped by _html_inline


def to_telegram(source: str) -> Markup:
    """Telegram HTML: only <b>, <i>, <a>; lists become bullet lines."""
    html = "\n\n".join(_plain_block(node, _telegram_inline) for node in parse(source))
    return Markup(html)  # noqa: S704 - every text run was escaped by _telegram_inline


def to_text(source: str) -> str:
    """Plain text for the email text part and Mastodon: links written out as „label (url)“."""
    return "\n\n".join(_plain_block(node, _text_inline) for node in parse(source))


def _html_block(node: Node, style: str) -> str:
    style_attr = f' style="{style}"' if style else ""
    if isinstance(node, Paragraph):
        return f"<p{style_attr}>{_html_inline(node.children)}</p>"
    tag = "ol" if node.ordered else "ul"
    start = f' start="{node.start}"' if node.ordered and node.start != 1 else ""
    items = "".join(f"<li>{_html_item(item)}</li>" for item in node.items)
    return f"<{tag}{start}{style_attr}>{items}</{tag}>"


def _html_item(item: Sequence[Node]) -> str:
    parts = [
        _html_inline(n.children) if isinstance(n, Paragraph) else _html_block(n, "") for n in item
    ]
    return "<br>".join(parts)


@dataclass(frozen=True)
class _Tags:
    """How one HTML dialect writes the inline nodes."""

    line_break: str
    strong: str
    emphasis: str


_EMAIL_TAGS = _Tags(line_break="<br>", strong="strong", emphasis="em")
_TELEGRAM_TAGS = _Tags(line_break="\n", strong="b", emphasis="i")


def _html_inline(nodes: Sequence[Inline], tags: _Tags = _EMAIL_TAGS) -> str:
    out: list[str] = []
    for node in nodes:
        match node:
            case Text(text=text):
                out.append(str(escape(text)))
            case LineBreak():
                out.append(tags.line_break)
            case Strong(children=c):
                out.append(f"<{tags.strong}>{_html_inline(c, tags)}</{tags.strong}>")
            case Emphasis(children=c):
                out.append(f"<{tags.emphasis}>{_html_inline(c, tags)}</{tags.emphasis}>")
            case Link(href=href, children=c):
                out.append(f'<a href="{escape(href)}">{_html_inline(c, tags)}</a>')
    return "".join(out)


def _telegram_inline(nodes: Sequence[Inline]) -> str:
    return _html_inline(nodes, _TELEGRAM_TAGS)


InlineRenderer = Callable[[Sequence[Inline]], str]


def _plain_block(node: Node, inline: InlineRenderer) -> str:
    if isinstance(node, Paragraph):
        return inline(node.children)
    lines = []
    for number, item in enumerate(node.items, start=node.start):
        marker = f"{number}." if node.ordered else "•"
        body = "\n".join(_plain_block(child, inline) for child in item)
        lines.append(f"{marker} {body}")
    return "\n".join(lines)


def _text_inline(nodes: Sequence[Inline]) -> str:
    out: list[str] = []
    for node in nodes:
        match node:
            case Text(text=text):
                out.append(text)
            case LineBreak():
                out.append("\n")
            case Strong(children=c) | Emphasis(children=c):
                out.append(_text_inline(c))
            case Link(href=href, children=c):
                label = _text_inline(c)
                out.append(
                    href if label in (href, href.removeprefix("mailto:")) else f"{label} ({href})"
                )
    return "".join(out)
