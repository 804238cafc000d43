"""Count characters the way the receiving servers do.

Mastodon (``app/validators/status_length_validator.rb``) counts the grapheme clusters of
``spoiler_text + countable_text(text)``. ``countable_text`` is the text with every URL that
twitter-text's extractor finds *with a scheme* replaced by 23 ``x``
(``characters_reserved_per_url``) and every mention ``@user@domain`` shortened to ``@user``;
everything else counts as written. The URL regex is twitter-text 3.1.0's ``valid_url`` with
Mastodon's overrides from ``config/initializers/twitter_regex.rb`` (more schemes, any non-space
path character, Unicode in the query); a match only counts when its domain passes
``is_valid_domain`` (IDNA-encodable, whole URL at most 4,096 characters after encoding).
Telegram counts UTF-16 code units.
"""

from __future__ import annotations

import stringprep
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, NamedTuple

import regex

from bzi_broadcast.render.tlds import COUNTRY, GENERIC

# twitter-text's Extractor::MAX_URL_LENGTH: longer URLs are not entities, so they count in full.
MAX_URL_LENGTH = 4096
# Extractor::URL_PROTOCOL_LENGTH ("https://"), added for scheme-less URLs (never counted here).
URL_PROTOCOL_LENGTH = 8
# Mastodon's Extractor skips remote mentions whose domain is longer than this.
MAX_MENTION_DOMAIN_LENGTH = 253
MAX_TCO_SLUG_LENGTH = 40

_DIRECTIONAL = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_INVALID = "\ufffe\ufeff\uffff"
_UNICODE_SPACES = "\t-\r \x85\xa0\u1680\u180e\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Ruby's PUNCTUATION_CHARS is single-quoted, so its backslashes only escape: "\" is not in it.
_PUNCTUATION = r"!\"#$%&'()*+,\-./:;<=>?@\[\]\^_`{|}~"
_CTRL = "\x00-\x1f\x7f"
_LATIN_ACCENTS = (
    "\xc0-\xd6\xd8-\xf6\xf8-\xff\u0100-\u024f\u0253\u0254\u0256\u0257\u0259\u025b\u0263\u0268"
    "\u026f\u0272\u0289\u028b\u02bb\u0300-\u036f\u1e00-\u1eff"
)
_UCHARS = (
    "\xa0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef\U00010000-\U0001fffd\U00020000-\U0002fffd"
    "\U00030000-\U0003fffd\U00040000-\U0004fffd\U00050000-\U0005fffd\U00060000-\U0006fffd"
    "\U00070000-\U0007fffd\U00080000-\U0008fffd\U00090000-\U0009fffd\U000a0000-\U000afffd"
    "\U000b0000-\U000bfffd\U000c0000-\U000cfffd\U000d0000-\U000dfffd\U000e1000-\U000efffd"
    "\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd"
)


def _tlds(names: tuple[str, ...]) -> str:
    return "(?:(?:" + "|".join(regex.escape(n) for n in names) + ")(?=[^0-9a-z@+-]|$))"


def _balanced_parens(path_char: str) -> str:
    return rf"\((?:{path_char}+|(?:{path_char}*\({path_char}+\){path_char}*))\)"


_DOMAIN_CHAR = f"[^{_DIRECTIONAL}{_PUNCTUATION}{_CTRL}{_INVALID}{_UNICODE_SPACES}]"
_DOMAIN = (
    rf"(?:(?:{_DOMAIN_CHAR}(?:[_-]|{_DOMAIN_CHAR})*)?{_DOMAIN_CHAR}\.)*"
    rf"(?:(?:{_DOMAIN_CHAR}(?:[-]|{_DOMAIN_CHAR})*)?{_DOMAIN_CHAR}\.)"
    rf"(?:{_tlds(GENERIC)}|{_tlds(COUNTRY)}|(?:xn--[0-9a-z]+))"
)
# Mastodon overrides the path characters but defines its balanced parentheses *after* the ending
# characters, which therefore still embed twitter-text's original parentheses rule.
_STOCK_PATH_CHAR = rf"[a-z\p{{Cyrillic}}0-9!*';:=+,.$/%#\[\]\p{{Pd}}_~&|@{_LATIN_ACCENTS}]"
_PATH_CHAR = r"[^\p{White_Space}<>()?]"
_PATH_END = (
    r"(?:[^\p{White_Space}()?!*\"'「」<>;:=,.$%\[\]~&|@]"
    f"|(?:{_balanced_parens(_STOCK_PATH_CHAR)}))"
)
_PATH = (
    rf"(?:(?:{_PATH_CHAR}*(?:{_balanced_parens(_PATH_CHAR)}{_PATH_CHAR}*)*{_PATH_END})"
    rf"|(?:{_PATH_CHAR}+/))"
)
_QUERY = rf"\?[a-z0-9!?*'();:&=+$/%#\[\]\-_.,~|@\^{_UCHARS}]*[a-z0-9_&=#/\-{_UCHARS}]"


@cache
def url_regex() -> regex.Pattern[str]:
    """twitter-text's REGEXEN[:valid_url] as Mastodon configures it; group ``url`` is the entity.

    The definition ``url_matches`` follows; compiled on first use only (≈ 0.1 s), since counting
    itself uses the parts below."""
    return regex.compile(
        rf"(?P<before>[^A-Z0-9@＠$#＃{_INVALID}]|[{_DIRECTIONAL}]|^)"
        r"(?P<url>(?P<protocol>(?:https?|dat|dweb|ipfs|ipns|ssb|gopher|gemini)://)?"
        rf"(?P<domain>{_DOMAIN})(?::[0-9]+)?(?P<path>/{_PATH}*)?(?:{_QUERY})?)",
        regex.IGNORECASE | regex.MULTILINE,
    )


# The same regex in parts, for the linear scan below (see _Scan).
_SCHEME_RE = regex.compile(r"(?:https?|dat|dweb|ipfs|ipns|ssb|gopher|gemini)://", regex.IGNORECASE)
_PRECEDING_RE = regex.compile(rf"[^A-Z0-9@＠$#＃{_INVALID}]|[{_DIRECTIONAL}]", regex.IGNORECASE)
_DOMAIN_CHAR_RE = regex.compile(_DOMAIN_CHAR)
_DOMAIN_RUN_RE = regex.compile(rf"(?:{_DOMAIN_CHAR}|[-_.])+")
_TLD_RE = regex.compile(
    rf"{_tlds(GENERIC)}|{_tlds(COUNTRY)}|(?:xn--[0-9a-z]+)", regex.IGNORECASE | regex.MULTILINE
)
_REST_RE = regex.compile(
    rf"(?::[0-9]+)?(?:/{_PATH}*)?(?:{_QUERY})?", regex.IGNORECASE | regex.MULTILINE
)
_TCO_RE = regex.compile(r"^https?://t\.co/([a-z0-9]+)", regex.IGNORECASE)
# A URL entity needs a scheme and contains no ASCII whitespace, so only such tokens are scanned.
_TOKEN_RE = regex.compile(r"[^ \t\n\r\f\v]+")

# Account::MENTION_RE (USERNAME_RE is case-insensitive; [[:word:]] is letters, marks, digits, "_").
_WORD = r"[\p{L}\p{M}\p{Nd}\p{Pc}]"
MENTION_RE: regex.Pattern[str] = regex.compile(
    rf"(?<![=/{_WORD[1:-1]}])@(?P<user>(?i:[a-z0-9_]+(?:[.-]+[a-z0-9_]+)*))"
    rf"(?:@(?P<domain>{_WORD}+(?:[.-]+{_WORD}+)*))?"
)  # group 1 is the username, as callers shortening "@user@domain" rely on
# twitter-text's end_mention_match: a mention followed by these is not one.
_MENTION_END_RE = regex.compile(rf"(?:[@＠]|[{_LATIN_ACCENTS}]|://)", regex.IGNORECASE)
_GRAPHEME = regex.compile(r"\X")
_BLANK = regex.compile(r"\p{White_Space}*")


class Entity(NamedTuple):
    """A span Mastodon counts differently: a URL (``mention`` is None) or a mention."""

    start: int
    end: int
    mention: str | None = None

    def counted_as(self, url_length: int) -> str:
        return "x" * url_length if self.mention is None else self.mention


def graphemes(text: str) -> list[str]:
    found: list[str] = _GRAPHEME.findall(text)
    return found


def grapheme_count(text: str) -> int:
    return len(_GRAPHEME.findall(text))


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def url_entities(text: str) -> list[Entity]:
    """The URLs ``Extractor.extract_urls_with_indices(text, extract_url_without_protocol: false)``
    returns, as code-point spans."""
    if ":" not in text:
        return []
    found: list[Entity] = []
    for token in _TOKEN_RE.finditer(text):
        if "://" in token.group():
            found += _token_urls(text, max(token.start() - 1, 0), token.end())
    return found


def _token_urls(text: str, start: int, end: int) -> list[Entity]:
    # The scan starts one character early: that whitespace is the URL's "preceding character".
    piece = text[start:end]
    found = []
    for match in url_matches(piece):
        entity = _url_entity(piece, match)
        if entity is not None:
            found.append(Entity(start + entity.start, start + entity.end))
    return found


def url_matches(text: str) -> list[UrlMatch]:
    """Every match of ``url_regex()`` in the order Ruby's ``text.scan`` yields them, with or
    without a scheme, in linear time (the regex's own ``finditer`` may take seconds)."""
    return list(_Scan(text).matches())


class UrlMatch(NamedTuple):
    """One match of the URL regex: the URL's span, whether it has a scheme, the domain's span."""

    start: int
    end: int
    scheme: bool
    domain_start: int
    domain_end: int


def _url_entity(text: str, match: UrlMatch) -> Entity | None:
    """Extractor's checks on one match; scheme-less matches are skipped (but consumed the text)."""
    if not match.scheme:
        return None
    url = text[match.start : match.end]
    tco = _TCO_RE.match(url)
    if tco:
        if len(tco.group(1)) > MAX_TCO_SLUG_LENGTH:
            return None
        url = tco.group(0)
    if not _valid_domain(len(url), text[match.domain_start : match.domain_end]):
        return None
    return Entity(match.start, match.start + len(url))


def _valid_domain(url_length: int, domain: str) -> bool:
    """Extractor#is_valid_domain: IDN::Idna.toASCII must succeed and the encoded URL be short."""
    # libidn (idn-ruby) refuses code points unassigned in Unicode 3.2; Python's codec allows them.
    if any(stringprep.in_table_a1(char) for char in domain):
        return False
    try:
        encoded = domain.encode("idna")
    except UnicodeError:
        return False
    return url_length + max(len(encoded) - len(domain), 0) <= MAX_URL_LENGTH


def _tld_trie(names: tuple[str, ...]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for name in names:
        node = root
        for char in name.casefold():
            node = node.setdefault(char, {})
        node[""] = {}  # a name ends here
    return root


_TLD_TRIE = _tld_trie(GENERIC + COUNTRY)


def _may_be_tld(text: str, position: int) -> bool:
    """A quick superset of _TLD_RE.match: some TLD's case fold starts here (or "xn--")."""
    if text[position : position + 4].casefold() == "xn--":
        return True
    node = _TLD_TRIE
    for char in text[position:]:
        for folded in char.casefold():
            node = node.get(folded, {})
        if "" in node:
            return True
        if not node:
            return False
    return False


class _Scan:
    """The matches Ruby's ``text.scan(valid_url)`` yields, found in linear time.

    Backtracking through the URL regex from every position is quadratic or worse on long runs of
    letters and dots (2,000 characters of "a.a.a…" took 8 s). The domain part is the costly one,
    and its outcome from a start position depends only on the first label and the dot ending it:
    ``SUB* NAME TLD`` with greedy SUB* tries the most labels first, so the domain after a dot is
    computed once per dot, right to left, and every start reuses it. Port, path and query are
    matched by the regex itself, from the domain's end, once per match.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.domain_chars = {m.start() for m in _DOMAIN_CHAR_RE.finditer(text)}
        self.runs = [(m.start(), m.end()) for m in _DOMAIN_RUN_RE.finditer(text)]
        self.dots = [i for i, char in enumerate(text) if char == "."]
        self.underscores = [i for i, char in enumerate(text) if char == "_"]
        self.schemes = {m.start(): m.end() for m in _SCHEME_RE.finditer(text)}
        self.after_dot: dict[int, int | None] = {}
        self.tld_ends: dict[int, int | None] = {}

    def matches(self) -> Iterator[UrlMatch]:
        position = 0
        for before, start in self._attempts():
            if before < position:
                continue
            match = self._match_at(start)
            if match is not None:
                position = match.end
                yield match

    def _attempts(self) -> list[tuple[int, int]]:
        """(preceding character, URL start) pairs in the order the regex tries them."""
        preceding = {m.start() for m in _PRECEDING_RE.finditer(self.text)}
        starts = sorted(
            {*self.schemes, *(u for u in self.domain_chars if self._first_dot(u) is not None)}
        )
        pairs = [(u - 1, 0, u) for u in starts if u - 1 in preceding]
        # "^" (a zero-width preceding "character") is tried after a real one at the same place.
        pairs += [(u, 1, u) for u in starts if u == 0 or self.text[u - 1] == "\n"]
        return [(before, start) for before, _order, start in sorted(pairs)]

    def _match_at(self, start: int) -> UrlMatch | None:
        scheme_end = self.schemes.get(start)
        domain_start = start if scheme_end is None else scheme_end
        domain_end = self._domain_end(domain_start)
        if domain_end is None:
            return None  # with a scheme, a scheme-less try fails too: ":" ends the first label
        rest = _REST_RE.match(self.text, domain_end)
        end = rest.end() if rest else domain_end
        return UrlMatch(start, end, scheme_end is not None, domain_start, domain_end)

    def _domain_end(self, start: int) -> int | None:
        """``SUB* NAME TLD`` from ``start``: the first label is this start's, the rest is shared."""
        dot = self._first_dot(start)
        if start not in self.domain_chars or dot is None:
            return None
        sub, name = self._label(start, dot)
        shared = self._after(dot) if sub else None
        if shared is not None:
            return shared
        return self._tld_end(dot + 1) if name else None

    def _label(self, start: int, dot: int) -> tuple[bool, bool]:
        """Whether text[start:dot] is a SUB label (letters, "-" and "_" inside) and a NAME label."""
        chars = self.domain_chars
        sub = start < dot and start in chars and dot - 1 in chars
        index = bisect_left(self.underscores, start)
        name = sub and (index == len(self.underscores) or self.underscores[index] > dot)
        return sub, name

    def _after(self, dot: int) -> int | None:
        """Domain end when SUB* continues after ``dot`` (memoised, filled right to left)."""
        chain: list[int] = []
        step: int | None = dot
        while step is not None and step not in self.after_dot:
            chain.append(step)
            step = self._first_dot(step + 1)
        for each in reversed(chain):
            self.after_dot[each] = self._after_one(each)
        return self.after_dot[dot]

    def _after_one(self, dot: int) -> int | None:
        following = self._first_dot(dot + 1)
        if following is None:
            return None
        sub, name = self._label(dot + 1, following)
        shared = self.after_dot.get(following) if sub else None
        if shared is not None:
            return shared
        return self._tld_end(following + 1) if name else None

    def _tld_end(self, position: int) -> int | None:
        if position not in self.tld_ends:
            found = _TLD_RE.match(self.text, position) if _may_be_tld(self.text, position) else None
            self.tld_ends[position] = found.end() if found else None
        return self.tld_ends[position]

    def _first_dot(self, position: int) -> int | None:
        """The first "." at or after ``position`` reachable through domain characters, "-", "_"."""
        run = bisect_right(self.runs, (position, len(self.text) + 1)) - 1
        if run < 0 or not self.runs[run][0] <= position < self.runs[run][1]:
            return None
        index = bisect_left(self.dots, position)
        if index < len(self.dots) and self.dots[index] < self.runs[run][1]:
            return self.dots[index]
        return None


def mention_entities(text: str) -> list[Entity]:
    """``Extractor.extract_mentions_or_lists_with_indices``: each counted as ``@user``."""
    if "@" not in text and "＠" not in text:
        return []
    found = []
    for match in MENTION_RE.finditer(text):
        if _MENTION_END_RE.match(text, match.end()):
            continue
        domain = match.group("domain")
        if domain and len(domain) > MAX_MENTION_DOMAIN_LENGTH:
            continue
        found.append(Entity(match.start(), match.end(), "@" + match.group("user")))
    return found


def entities(text: str) -> tuple[Entity, ...]:
    """URLs and mentions, overlaps removed as ``remove_overlapping_entities`` does."""
    kept: list[Entity] = []
    for entity in sorted(url_entities(text) + mention_entities(text)):
        if not kept or kept[-1].end <= entity.start:
            kept.append(entity)
    return tuple(kept)


def countable_text(
    text: str, *, url_length: int = 23, found: Sequence[Entity] | None = None
) -> str:
    """The text as Mastodon measures it: URLs as placeholders, remote mentions shortened.

    ``found`` is ``entities(text)`` when the caller has it already."""
    if _BLANK.fullmatch(text):
        return ""
    parts, position = [], 0
    for entity in entities(text) if found is None else found:
        parts += [text[position : entity.start], entity.counted_as(url_length)]
        position = entity.end
    parts.append(text[position:])
    return "".join(parts)


def mastodon_length(text: str, *, url_length: int = 23, spoiler_text: str = "") -> int:
    return grapheme_count(spoiler_text + countable_text(text, url_length=url_length))
