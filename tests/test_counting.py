"""Mastodon's counting, the thread splitter and Telegram's HTML parser on known cases."""

from __future__ import annotations

import pytest

from bzi_broadcast.render import telegram_html as tg
from bzi_broadcast.render.counting import mastodon_length, utf16_length
from bzi_broadcast.render.thread import ThreadLimits, split_thread


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hallo Welt", 10),
        ("👨‍👩‍👧‍👦", 1),
        ("🇩🇪🇹🇷", 2),
        ("e\u0301", 1),
        ("한국어", 3),
        ("Mehr: https://example.org/" + "a" * 200, 6 + 23),
        ("(https://example.org/x).", 1 + 23 + 2),
        # Mastodon's path may end in any character but ASCII quotes, 「」 and some punctuation, so
        # the closing „…“ quote is part of the URL: only the opening one counts.
        ("„https://example.org/x“", 1 + 23),
        ("@alice@example.social hallo", len("@alice hallo")),
        ("@alice hallo", 12),
        ("mail@example.org", 16),
        ("example.org", 11),
    ],
)
def test_mastodon_length(text: str, expected: int) -> None:
    assert mastodon_length(text) == expected


def test_url_length_and_content_warning_are_counted() -> None:
    assert mastodon_length("https://example.org", url_length=30) == 30
    assert mastodon_length("abc", spoiler_text="CW 🗳️") == 3 + 4


def test_utf16_counts_surrogate_pairs() -> None:
    assert utf16_length("a😀") == 3


def test_short_text_is_one_post_without_numbering() -> None:
    assert split_thread("Kurz.", hashtags=["Tag"]) == ["Kurz.\n\n#Tag"]


def test_long_text_splits_at_paragraphs_then_sentences() -> None:
    paragraph = "Ein Satz mit einigen Wörtern darin. " * 8
    posts = split_thread(
        "\n\n".join([paragraph.strip()] * 3), limits=ThreadLimits(max_characters=300)
    )
    assert len(posts) >= 3
    assert all(mastodon_length(p) <= 300 for p in posts)
    assert all(p.split("\n\n")[0].endswith(".") for p in posts)
    assert [p.rsplit("\n\n", 1)[1] for p in posts] == [
        f"{i}/{len(posts)}" for i in range(1, len(posts) + 1)
    ]


def test_hashtags_close_the_first_post_only() -> None:
    posts = split_thread("Wort " * 300, hashtags=["A", "#B"])
    assert "#A #B" in posts[0]
    assert all("#A" not in p for p in posts[1:])


def test_numbering_width_is_budgeted_for_ten_and_more_posts() -> None:
    posts = split_thread("Wort. " * 1000, limits=ThreadLimits(max_characters=100))
    assert len(posts) >= 10
    assert all(mastodon_length(p) <= 100 for p in posts)
    assert posts[9].endswith(f"10/{len(posts)}")


def test_a_long_url_is_never_split() -> None:
    url = "https://example.org/" + "x" * 2000
    posts = split_thread(("Text " * 80) + url + " Ende", limits=ThreadLimits(max_characters=120))
    assert sum(url in p for p in posts) == 1


def test_a_very_long_word_splits_at_grapheme_boundaries() -> None:
    word = "👨‍👩‍👧‍👦" * 400
    posts = split_thread(word, limits=ThreadLimits(max_characters=100))
    assert "".join(p.rsplit("\n\n", 1)[0] for p in posts) == word


def test_content_warning_reduces_the_budget() -> None:
    text = "Satz. " * 100
    plain = split_thread(text, limits=ThreadLimits(max_characters=200))
    warned = split_thread(text, limits=ThreadLimits(max_characters=200), spoiler_text="X" * 80)
    assert len(warned) > len(plain)
    assert all(mastodon_length(p, spoiler_text="X" * 80) <= 200 for p in warned)


def test_a_too_small_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        ThreadLimits(max_characters=10)


def test_telegram_entities_and_offsets_in_utf16() -> None:
    parsed = tg.parse('😀 <b>fett</b> <a href="https://x.de/?a=1&amp;b=2">Link</a> &#128512;')
    assert parsed.text == "😀 fett Link 😀"
    bold, link = parsed.entities
    assert (bold.type, bold.offset, bold.length) == ("bold", 3, 4)
    assert (link.type, link.url) == ("text_link", "https://x.de/?a=1&b=2")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("<script>x</script>", 'Unsupported start tag "script" at byte offset 0'),
        ("<b>offen", 'Can\'t find end tag corresponding to start tag "b"'),
        ("a </b>", "Unexpected end tag at byte offset 2"),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
    ],
)
def test_telegram_refuses_what_the_bot_api_refuses(source: str, message: str) -> None:
    with pytest.raises(tg.TelegramHTMLError) as caught:
        tg.parse(source)
    assert message in str(caught.value)


def test_telegram_keeps_metacharacters_literally() -> None:
    text = "Migrant*innen _blank_ <script> & „Zitat“"
    assert tg.parse(tg.escape(text)).text == text


def test_blockquote_is_closed_and_reopened_across_a_split() -> None:
    source = "<blockquote>" + "\n\n".join(["Absatz " + "x" * 40] * 4) + "</blockquote>"
    pieces = tg.split_message(source, limit=100)
    assert len(pieces) > 1
    assert all(p.startswith("<blockquote>") and p.endswith("</blockquote>") for p in pieces)
    assert all(tg.visible_length(p) <= 100 for p in pieces)


def test_caption_is_short_and_the_rest_follows() -> None:
    source = "\n\n".join(["Absatz. " * 30] * 10)
    caption, rest = tg.split_caption(source)
    assert tg.visible_length(caption) <= 1024
    assert rest
    assert all(tg.visible_length(p) <= 4096 for p in rest)
