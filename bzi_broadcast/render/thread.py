"""Split one text into a Mastodon thread whose every post fits the instance's limit.

Splits at paragraphs first, then sentences, then words, and only as a last resort inside a word,
at grapheme-cluster boundaries; a URL Mastodon counts as a fixed length is never split, and neither
is a hashtag or a mention. Posts are numbered ``i/n`` on their last line; hashtags close the first
post. Whitespace between pieces is kept as written, so no text is lost.

The splitter is linear in the text length: every paragraph, sentence, word and grapheme is counted
once and posts are filled by adding those counts, never by recounting a growing string. Sums can
only overestimate what Mastodon counts, except at rare cut points inside a word where the URL regex
reads differently; each finished post is therefore counted once more, exactly, and the packing is
repeated with a smaller budget if one overflows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import regex

from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render.counting import (
    Entity,
    countable_text,
    entities,
    grapheme_count,
    graphemes,
    mastodon_length,
)

_SENTENCE_END = regex.compile(r"(?<=[.!?…][“”»«‘’‚„\"')]*)(\s+)")
_WHITESPACE = regex.compile(r"(\s+)")
_HASHTAG = regex.compile(r"#[\p{L}\p{N}_]+")
MIN_CHARACTERS = 40
# A content warning may take at most this share of the limit; with more, the rest would be cut into
# hundreds of posts of a few letters each.
MAX_SPOILER_SHARE = 0.5
# How often a thread is packed again with a smaller budget when the exact count disagrees.
_REPACKS = 3

Piece = tuple[str, str, int]  # separator before it, text, Mastodon length of the text


@dataclass(frozen=True, kw_only=True)
class ThreadLimits:
    max_characters: int = 500
    url_length: int = 23
    spoiler_share: float = MAX_SPOILER_SHARE  # mastodon.content_warning_share

    def __post_init__(self) -> None:
        if not 0 < self.spoiler_share < 1:
            raise ValueError("spoiler_share must lie between 0 and 1")
        if self.max_characters < MIN_CHARACTERS:
            raise ValueError(f"max_characters must be at least {MIN_CHARACTERS}")
        if self.url_length < 1:
            raise ValueError("url_length must be positive")


def split_thread(
    text: str,
    *,
    limits: ThreadLimits = ThreadLimits(),
    spoiler_text: str = "",
    hashtags: Sequence[str] = (),
) -> list[str]:
    _check_spoiler(spoiler_text, limits)
    tag_line = " ".join(_normalize_tag(tag) for tag in hashtags)
    _check_tags(tag_line, spoiler_text, limits)
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if not paragraphs:
        return [tag_line] if tag_line else []
    weigh = _Weigher(limits.url_length)
    # Adding the content warning or a hashtag line never makes a text count less, so a body that
    # alone is over the limit needs no exact count with both (one pass less over a long text).
    if weigh.joined(paragraphs) <= limits.max_characters:
        single = "\n\n".join([*paragraphs, tag_line] if tag_line else paragraphs)
        if _overflow(single, limits, spoiler_text) <= 0:
            return [single]
    return _numbered(paragraphs, limits, spoiler_text, tag_line, weigh)


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


def _check_spoiler(spoiler_text: str, limits: ThreadLimits) -> None:
    length, most = grapheme_count(spoiler_text), int(limits.max_characters * limits.spoiler_share)
    if length > most:
        message = _(
            "Die Inhaltswarnung ist {length} Zeichen lang; erlaubt sind höchstens {most} der "
            "{limit} Zeichen eines Beitrags."
        )
        raise ValueError(message.format(length=length, most=most, limit=limits.max_characters))


def _check_tags(tag_line: str, spoiler_text: str, limits: ThreadLimits) -> None:
    """The first post holds the hashtags, the content warning, its numbering and some text."""
    needed = grapheme_count(tag_line) + grapheme_count(spoiler_text) + len("\n\n1/99\n\n")
    if tag_line and needed + MIN_CHARACTERS > limits.max_characters:
        message = _(
            "Die Hashtags brauchen {length} Zeichen; mit Inhaltswarnung und Nummerierung bleibt "
            "im ersten Beitrag ({limit} Zeichen) kein Platz für Text. Bitte weniger oder kürzere "
            "Hashtags wählen."
        )
        raise ValueError(
            message.format(length=grapheme_count(tag_line), limit=limits.max_characters)
        )


def _normalize_tag(tag: str) -> str:
    return "#" + tag.strip().lstrip("#")


def _overflow(post: str, limits: ThreadLimits, spoiler_text: str) -> int:
    length = mastodon_length(post, url_length=limits.url_length, spoiler_text=spoiler_text)
    return length - limits.max_characters


def _numbered(
    paragraphs: list[str], limits: ThreadLimits, spoiler_text: str, tag_line: str, weigh: _Weigher
) -> list[str]:
    spoiler = grapheme_count(spoiler_text)
    # The post count is at least the text's length over the widest budget: start with its width.
    total = weigh.joined(paragraphs)
    digits = len(str(-(-total // _Budget.of(limits, spoiler, tag_line, 1, 0).rest)))
    slack, repacks = 0, 0
    while repacks <= _REPACKS:
        budget = _Budget.of(limits, spoiler, tag_line, digits, slack)
        posts = _decorate(_Packer(budget, weigh).pack(paragraphs), tag_line)
        if len(str(len(posts))) > digits:
            digits += 1  # the numbering got wider: pack again with less room
            continue
        over = max(_overflow(post, limits, spoiler_text) for post in posts)
        if over <= 0:
            return posts
        slack, repacks = slack + over, repacks + 1
    raise ValueError(_("Der Text lässt sich nicht in Beiträge passender Länge teilen."))


@dataclass(frozen=True)
class _Budget:
    """Mastodon length a post body may have, by post index: the first also carries the hashtags."""

    first: int
    rest: int

    @classmethod
    def of(
        cls, limits: ThreadLimits, spoiler: int, tag_line: str, digits: int, slack: int
    ) -> _Budget:
        rest = limits.max_characters - spoiler - (2 + 2 * digits + 1) - slack  # "\n\n" + "i/n"
        first = rest - (2 + grapheme_count(tag_line) if tag_line else 0)
        return cls(first=first, rest=rest)

    def at(self, index: int) -> int:
        return self.first if index == 0 else self.rest


@dataclass
class _Packer:
    """Fills posts greedily, keeping the running Mastodon length of the post being filled."""

    budget: _Budget
    weigh: _Weigher
    posts: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    length: int = 0

    def pack(self, paragraphs: Sequence[str]) -> list[str]:
        for paragraph in paragraphs:
            self._add_paragraph(paragraph)
        self._flush()
        return self.posts

    def _room(self) -> int:
        return self.budget.at(len(self.posts)) - self.length

    def _add_paragraph(self, paragraph: str) -> None:
        length = self.weigh(paragraph)
        if self.parts and 2 + length <= self._room():
            self._append("\n\n", paragraph, length)
            return
        if not self.parts and length <= self._room():
            self._append("", paragraph, length)
            return
        self._flush()
        index = len(self.posts)
        limit = min(self.budget.at(index), self.budget.at(index + 1))
        for separator, piece, piece_length in _pieces(paragraph, limit, self.weigh):
            self._add_piece(separator, piece, piece_length)

    def _add_piece(self, separator: str, piece: str, length: int) -> None:
        if not self.parts:
            self._append("", piece, length)
        elif grapheme_count(separator) + length <= self._room():
            self._append(separator, piece, length)
        else:
            self._flush()
            self._append("", piece, length)

    def _append(self, separator: str, piece: str, length: int) -> None:
        self.parts += [separator, piece]
        self.length += grapheme_count(separator) + length

    def _flush(self) -> None:
        if self.parts:
            self.posts.append("".join(self.parts))
        self.parts, self.length = [], 0


@dataclass
class _Weigher:
    """Mastodon length of a text alone (without content warning), and its URLs and mentions,
    remembered for one split: a long paragraph is weighed whole, as its only sentence and as its
    only word, and then cut around the same entities."""

    url_length: int
    known: dict[str, int] = field(default_factory=dict)
    found: dict[str, tuple[Entity, ...]] = field(default_factory=dict)

    def __call__(self, text: str) -> int:
        if text not in self.known:
            counted = countable_text(text, url_length=self.url_length, found=self.entities(text))
            self.known[text] = grapheme_count(counted)
        return self.known[text]

    def joined(self, paragraphs: Sequence[str]) -> int:
        """Length of the paragraphs joined by blank lines: the sum of their lengths and the
        separators', since no URL or mention spans white space and no grapheme cluster a line
        feed (UAX #29, GB4 and GB5)."""
        return sum(self(paragraph) for paragraph in paragraphs) + 2 * (len(paragraphs) - 1)

    def entities(self, text: str) -> tuple[Entity, ...]:
        if text not in self.found:
            self.found[text] = entities(text)
        return self.found[text]


def _pieces(paragraph: str, limit: int, weigh: _Weigher) -> Iterator[Piece]:
    """(separator, piece, length) triples, each piece short enough for an empty post."""
    for level in (_SENTENCE_END, _WHITESPACE):
        pieces = [(s, p, weigh(p)) for s, p in _split(paragraph, level)]
        if all(length <= limit for _s, _p, length in pieces):
            yield from pieces
            return
    for separator, word, length in pieces:
        if length <= limit:
            yield separator, word, length
            continue
        chunks = _chunks(word, limit, weigh)
        yield separator, *chunks[0]
        yield from (("", *chunk) for chunk in chunks[1:])


def _split(text: str, pattern: regex.Pattern[str]) -> list[tuple[str, str]]:
    parts = pattern.split(text)
    pieces = [("", parts[0])]
    pieces += [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    return [(separator, piece) for separator, piece in pieces if piece]


def _chunks(word: str, limit: int, weigh: _Weigher) -> list[tuple[str, int]]:
    """Cut an over-long word at grapheme boundaries, keeping URLs and mentions whole."""
    if _HASHTAG.fullmatch(word):
        raise ValueError(
            _("Der Hashtag ist zu lang für einen Beitrag: {tag}…").format(tag=word[:40])
        )
    chunks = _Chunks(limit)
    position = 0
    for entity in weigh.entities(word):
        chunks.add_graphemes(graphemes(word[position : entity.start]))
        counted = grapheme_count(entity.counted_as(weigh.url_length))
        if entity.mention is not None and counted > limit:  # a mention longer than a post:
            # cut like text (a URL is never cut: the splitter refuses it instead)
            chunks.add_graphemes(graphemes(word[entity.start : entity.end]))
        else:
            chunks.add(word[entity.start : entity.end], counted)
        position = entity.end
    chunks.add_graphemes(graphemes(word[position:]))
    return chunks.done()


@dataclass
class _Chunks:
    """Greedy cutting into pieces of at most ``limit``; a run of graphemes is cut by slicing."""

    limit: int
    chunks: list[tuple[str, int]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    length: int = 0

    def add(self, atom: str, length: int) -> None:
        if self.parts and self.length + length > self.limit:
            self._flush()
        self.parts.append(atom)
        self.length += length

    def add_graphemes(self, run: list[str]) -> None:
        taken = 0
        while taken < len(run):
            if self.parts and self.length >= self.limit:
                self._flush()
            # At least one grapheme, even into an empty chunk over a tiny limit (as add() does).
            piece = run[taken : taken + max(self.limit - self.length, 1)]
            self.parts.append("".join(piece))
            self.length += len(piece)
            taken += len(piece)

    def done(self) -> list[tuple[str, int]]:
        self._flush()
        return self.chunks

    def _flush(self) -> None:
        if self.parts:
            self.chunks.append(("".join(self.parts), self.length))
        self.parts, self.length = [], 0


def _decorate(bodies: list[str], tag_line: str) -> list[str]:
    total = len(bodies)
    posts = []
    for index, body in enumerate(bodies):
        parts = [body, tag_line] if index == 0 and tag_line else [body]
        posts.append("\n\n".join([*parts, f"{index + 1}/{total}"]))
    return posts
