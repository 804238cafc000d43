"""Split one text into a Mastodon thread whose every post fits the instance's limit.

Splits at paragraphs first, then sentences, then words, and only as a last resort inside a word,
at grapheme-cluster boundaries; an http(s) URL is never split (it counts as a fixed length anyway)
and neither is a hashtag. Posts are numbered ``i/n`` on their last line; hashtags close the first
post. Whitespace between pieces is kept as written, so no text is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import regex

from bzi_broadcast.render.counting import URL_RE, grapheme_count, graphemes, mastodon_length

_SENTENCE_END = regex.compile(r"(?<=[.!?…][“”»«‘’‚„\"')]*)(\s+)")
_WHITESPACE = regex.compile(r"(\s+)")
_HASHTAG = regex.compile(r"#[\p{L}\p{N}_]+")
MIN_CHARACTERS = 40


@dataclass(frozen=True, kw_only=True)
class ThreadLimits:
    max_characters: int = 500
    url_length: int = 23

    def __post_init__(self) -> None:
        if self.max_characters < MIN_CHARACTERS:
            raise ValueError(f"max_characters must be at least {MIN_CHARACTERS}")
        if self.url_length < 1:
            raise ValueError("url_length must be positive")


Fits = Callable[[str], bool]


def split_thread(
    text: str,
    *,
    limits: ThreadLimits = ThreadLimits(),
    spoiler_text: str = "",
    hashtags: Sequence[str] = (),
) -> list[str]:
    tag_line = " ".join(_normalize_tag(tag) for tag in hashtags)
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if not paragraphs:
        return [tag_line] if tag_line else []
    single = "\n\n".join([*paragraphs, tag_line] if tag_line else paragraphs)
    if _length(single, limits, spoiler_text) <= limits.max_characters:
        return [single]
    digits = 1
    while True:
        bodies = _pack(paragraphs, _budgets(limits, spoiler_text, tag_line, digits))
        if len(str(len(bodies))) <= digits:
            return _decorate(bodies, tag_line)
        digits += 1


def strip_decorations(posts: Sequence[str], hashtags: Sequence[str] = ()) -> str:
    """The thread's text without numbering and hashtag line (for tests and previews)."""
    tag_line = " ".join(_normalize_tag(tag) for tag in hashtags)
    bodies = []
    for post in posts:
        lines = post.split("\n\n")
        if len(posts) > 1 and regex.fullmatch(r"\d+/\d+", lines[-1]):
            lines.pop()
        if tag_line and lines and lines[-1] == tag_line:
            lines.pop()
        bodies.append("\n\n".join(lines))
    return "\n\n".join(body for body in bodies if body)


def _normalize_tag(tag: str) -> str:
    return "#" + tag.strip().lstrip("#")


def _length(text: str, limits: ThreadLimits, spoiler_text: str) -> int:
    return mastodon_length(text, url_length=limits.url_length, spoiler_text=spoiler_text)


def _fits(limits: ThreadLimits, spoiler_text: str, tag_line: str, index: int, digits: int) -> Fits:
    """Whether a body fits post ``index``, reserving room for its hashtags and numbering."""
    suffix = 2 + 2 * digits + 1  # "\n\n" + "i/n" at the widest
    if index == 0 and tag_line:
        suffix += 2 + grapheme_count(tag_line)
    budget = limits.max_characters - suffix
    return lambda body: _length(body, limits, spoiler_text) <= budget


def _budgets(
    limits: ThreadLimits, spoiler_text: str, tag_line: str, digits: int
) -> Callable[[int], Fits]:
    return lambda index: _fits(limits, spoiler_text, tag_line, index, digits)


def _pack(paragraphs: Sequence[str], fits_post: Callable[[int], Fits]) -> list[str]:
    posts: list[str] = []
    current = ""
    for paragraph in paragraphs:
        joined = f"{current}\n\n{paragraph}" if current else paragraph
        if fits_post(len(posts))(joined):
            current = joined
            continue
        if current:
            posts.append(current)
            current = ""
        for separator, piece in _pieces(
            paragraph, fits_post(len(posts)), fits_post(len(posts) + 1)
        ):
            joined = f"{current}{separator}{piece}" if current else piece
            if fits_post(len(posts))(joined):
                current = joined
            else:
                posts.append(current)
                current = piece
    if current:
        posts.append(current)
    return posts


def _pieces(paragraph: str, fits_here: Fits, fits_next: Fits) -> Iterator[tuple[str, str]]:
    """(separator, piece) pairs, each piece small enough for an empty post."""

    def fits(piece: str) -> bool:
        return fits_here(piece) and fits_next(piece)

    for level in (_SENTENCE_END, _WHITESPACE):
        if all(fits(p) for _s, p in _split(paragraph, level)):
            yield from _split(paragraph, level)
            return
    for separator, word in _split(paragraph, _WHITESPACE):
        if fits(word):
            yield separator, word
        else:
            chunks = _chunks(word, fits)
            yield separator, chunks[0]
            yield from (("", chunk) for chunk in chunks[1:])


def _split(text: str, pattern: regex.Pattern[str]) -> list[tuple[str, str]]:
    parts = pattern.split(text)
    pieces = [("", parts[0])]
    pieces += [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    return [(separator, piece) for separator, piece in pieces if piece]


def _chunks(word: str, fits: Fits) -> list[str]:
    """Cut an over-long word at grapheme boundaries, keeping URLs whole."""
    if _HASHTAG.fullmatch(word):
        raise ValueError(f"hashtag too long for one post: {word[:40]}…")
    chunks: list[str] = []
    current = ""
    for unit in _atoms(word):
        if current and not fits(current + unit):
            chunks.append(current)
            current = ""
        current += unit
    if current:
        chunks.append(current)
    return chunks


def _atoms(word: str) -> Iterator[str]:
    position = 0
    for match in URL_RE.finditer(word):
        yield from graphemes(word[position : match.start()])
        yield match.group(0)
        position = match.end()
    yield from graphemes(word[position:])


def _decorate(bodies: list[str], tag_line: str) -> list[str]:
    total = len(bodies)
    posts = []
    for index, body in enumerate(bodies):
        parts = [body, tag_line] if index == 0 and tag_line else [body]
        posts.append("\n\n".join([*parts, f"{index + 1}/{total}"]))
    return posts
