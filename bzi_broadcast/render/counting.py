"""Count characters the way the receiving servers do.

Mastodon (``StatusLengthValidator``): grapheme clusters of the content warning plus grapheme
clusters of the text in which every http(s) URL counts as ``characters_reserved_per_url`` (23 by
default) and every remote mention ``@user@domain`` counts as ``@user``. Telegram counts UTF-16
code units.
"""

from __future__ import annotations

import regex

# An http(s) URL as twitter-text's extractor finds it: scheme, host, optional port and path;
# trailing punctuation and closing quotes are not part of it, balanced parentheses are.
URL_RE: regex.Pattern[str] = regex.compile(
    r"""https?://
        (?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)*[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?
        (?::\d{1,5})?
        (?:[/?\#](?:\([^\s()]*\)|[^\s()<>"„“”«»‚‘’]*[^\s()<>"„“”«»‚‘’.,;:!?'])*)?""",
    regex.VERBOSE | regex.IGNORECASE,
)
# Mastodon's Account::MENTION_RE: a username, then optionally @domain; not after a word character,
# "=" or "/" (so e-mail addresses are not mentions).
MENTION_RE: regex.Pattern[str] = regex.compile(
    r"(?<![=/\w])@([a-z0-9_]+(?:[a-z0-9_.-]+[a-z0-9_]+)?)@[\w.-]+\w", regex.IGNORECASE
)
_GRAPHEME = regex.compile(r"\X")


def graphemes(text: str) -> list[str]:
    found: list[str] = _GRAPHEME.findall(text)
    return found


def grapheme_count(text: str) -> int:
    return len(_GRAPHEME.findall(text))


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def countable_text(text: str, *, url_length: int = 23) -> str:
    """The text as Mastodon measures it: URLs as placeholders, remote mentions shortened."""
    text = URL_RE.sub(lambda m: "x" * url_length, text)
    shortened: str = MENTION_RE.sub(lambda m: "@" + m.group(1), text)
    return shortened


def mastodon_length(text: str, *, url_length: int = 23, spoiler_text: str = "") -> int:
    return grapheme_count(spoiler_text) + grapheme_count(
        countable_text(text, url_length=url_length)
    )
