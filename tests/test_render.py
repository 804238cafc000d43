"""Channel renderings of the seed example and of hostile input: structure, escaping, limits."""

from __future__ import annotations

import json
from email.parser import HeaderParser
from html.parser import HTMLParser

import pytest

from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.i18n import use_locale
from bzi_broadcast.render import Renderer, ThreadLimits, telegram_html
from bzi_broadcast.render.counting import mastodon_length
from bzi_broadcast.render.renditions import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER

HOSTILE = '<script>alert("x")</script> & Migrant*innen _blank_ <b>fett</b> &amp; "q" \'s\''


def announce(**fields: object) -> Announcement:
    data = {"title": "Titel", "blocks": [{"type": "text", "text": "Text"}], **fields}
    return parse_announcement(json.dumps(data), fmt="json")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))


def collect(html: str) -> _Collector:
    parser = _Collector()
    parser.feed(html)
    return parser


def test_email_has_subject_preheader_and_both_parts(
    renderer: Renderer, example: Announcement
) -> None:
    email = renderer.email(example)
    assert email.subject == "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
    assert email.preheader.startswith("Der BZI auf der 1. Regionalkonferenz")
    assert "Mittwoch, 5. November 2025" in email.html
    assert "Mittwoch, 5. November 2025" in email.text
    assert "„Die Vision einer weltoffenen Kommune" in email.text
    assert "vonnöten.“" in email.text


def test_email_html_is_self_contained_and_inlined(
    renderer: Renderer, example: Announcement
) -> None:
    html = renderer.email(example).html
    tags = collect(html).tags
    assert "script" not in tags
    assert "link" not in tags
    assert 'style="' in html
    assert 'class="content" style=' in html
    assert "@media" in html  # phone rules survive in <style>
    assert "http://" not in html.replace("http://www.w3.org/1999/xhtml", "")


def test_email_footer_has_impressum_and_recipient_placeholders(
    renderer: Renderer, example: Announcement
) -> None:
    email = renderer.email(example)
    for part in (email.html, email.text):
        assert UNSUBSCRIBE_PLACEHOLDER in part
        assert PREFERENCES_PLACEHOLDER in part
        assert "Musterstraße 1, 10115 Berlin" in part


def test_email_text_part_is_written_not_stripped(renderer: Renderer, example: Announcement) -> None:
    text = renderer.email(example).text
    assert "<" not in text
    assert "Umgesetzt von: PHINEO gAG (https://www.phineo.org)" in text


def test_email_image_has_alt_and_dimensions(renderer: Renderer) -> None:
    a = announce(
        image={
            "src": "https://cdn.example.org/bild.jpg",
            "alt": 'Podium "A" & <B>',
            "width": 1200,
            "height": 800,
        }
    )
    images = collect(renderer.email(a).html).images
    assert images == [images[0]]
    assert images[0]["alt"] == 'Podium "A" & <B>'
    assert images[0]["width"] == "536"
    assert images[0]["height"] == "357"


def test_local_image_is_referenced_by_content_id(renderer: Renderer) -> None:
    a = announce(image={"src": "bilder/podium.jpg", "alt": "Podium"})
    email = renderer.email(a)
    assert 'src="cid:' in email.html
    assert email.inline_image is not None


@pytest.mark.parametrize("field", ["title", "summary"])
def test_hostile_text_is_escaped_in_every_html_output(renderer: Renderer, field: str) -> None:
    a = announce(**{field: HOSTILE})
    r = renderer.render(a, channels=("email", "telegram", "web"))
    assert r.email and r.telegram and r.web
    for html in (r.email.html, r.web.html):
        assert "<script>" not in html
        assert "&lt;script&gt;" in html
        assert "<b>fett</b>" not in html
    for message in r.telegram.messages:
        parsed = telegram_html.parse(message.text)
        assert "<script>" in parsed.text
        assert "Migrant*innen _blank_ <b>fett</b> &amp;" in parsed.text


def test_hostile_markdown_link_is_not_a_link(renderer: Renderer) -> None:
    a = announce(blocks=[{"type": "text", "text": "[klick](javascript:alert(1)) <img src=x>"}])
    html = renderer.email(a).html
    assert "javascript:" not in html.split("klick")[0][-40:]
    assert "<img src=x>" not in html
    assert "&lt;img src=x&gt;" in html


def test_subject_never_contains_line_breaks(renderer: Renderer) -> None:
    a = announce(channels={"email": {"subject": "A\r\nBcc: x@example.org", "preheader": "P\nQ"}})
    email = renderer.email(a)
    assert "\n" not in email.subject and "\r" not in email.subject
    headers = HeaderParser().parsestr(f"Subject: {email.subject}\n\n")
    assert list(headers.keys()) == ["Subject"]


def test_mastodon_thread_fits_and_is_numbered(renderer: Renderer, example: Announcement) -> None:
    thread = renderer.mastodon(example)
    assert len(thread.posts) > 1
    for number, post in enumerate(thread.posts, start=1):
        assert post.length == mastodon_length(post.text)
        assert post.length <= 500
        assert post.text.endswith(f"{number}/{len(thread.posts)}")
        assert post.language == "de"
    assert "#WeltoffeneKommunen" in thread.posts[0].text
    assert all("#WeltoffeneKommunen" not in p.text for p in thread.posts[1:])


def test_mastodon_limit_and_url_length_are_inputs(
    renderer: Renderer, example: Announcement
) -> None:
    small = renderer.mastodon(example, ThreadLimits(max_characters=280, url_length=30))
    assert all(post.length <= 280 for post in small.posts)
    assert len(small.posts) > len(renderer.mastodon(example).posts)


def test_mastodon_content_warning_and_visibility(renderer: Renderer) -> None:
    a = announce(channels={"mastodon": {"visibility": "unlisted", "content_warning": "Politik"}})
    post = renderer.mastodon(a).posts[0]
    assert post.spoiler_text == "Politik"
    assert str(post.visibility) == "unlisted"
    assert post.length == mastodon_length(post.text, spoiler_text="Politik")


def test_telegram_messages_parse_and_fit(renderer: Renderer, example: Announcement) -> None:
    rendition = renderer.telegram(example)
    for message in rendition.messages:
        assert message.parse_mode == "HTML"
        assert telegram_html.visible_length(message.text) == message.length <= 4096
    assert rendition.messages[0].link_preview.is_disabled


def test_telegram_photo_caption_is_short(renderer: Renderer, example: Announcement) -> None:
    a = example.model_copy(
        update={
            "image": announce(image={"src": "https://cdn.example.org/p.jpg", "alt": "Podium"}).image
        }
    )
    messages = renderer.telegram(a).messages
    assert messages[0].photo == "https://cdn.example.org/p.jpg"
    assert messages[0].length <= 1024
    assert len(messages) >= 2


def test_english_announcement_uses_english_typography(renderer: Renderer) -> None:
    a = announce(
        language="en",
        blocks=[
            {
                "type": "event",
                "name": "Forum",
                "start": "2025-11-05 10:00",
                "end": "2025-11-05 16:00",
            },
            {"type": "quote", "speaker": "A", "text": "Hello."},
        ],
    )
    text = renderer.email(a).text
    assert "Wednesday, November 5, 2025, 10:00\u202fAM–4:00\u202fPM" in text or "Wednesday" in text
    assert "“Hello.”" in text
    assert "Unsubscribe" in text


def test_german_time_range_has_uhr(renderer: Renderer) -> None:
    a = announce(
        blocks=[
            {
                "type": "event",
                "name": "Forum",
                "start": "2025-11-05 10:00",
                "end": "2025-11-05 16:00",
            },
        ]
    )
    assert "Mittwoch, 5. November 2025, 10:00–16:00 Uhr" in renderer.email(a).text


def test_render_language_does_not_leak(renderer: Renderer) -> None:
    with use_locale("en"):
        text = renderer.email(announce()).text
    assert "Abmelden" in text


def test_web_fragment_and_atom_entry(renderer: Renderer, example: Announcement) -> None:
    web = renderer.web(example)
    assert web.html.startswith('<article lang="de"')
    assert "<blockquote>" in web.html
    assert web.atom_entry.startswith('<entry xmlns="http://www.w3.org/2005/Atom"')
    assert "&lt;blockquote&gt;" in web.atom_entry
    from xml.etree import ElementTree

    entry = ElementTree.fromstring(web.atom_entry)
    assert entry.find("{http://www.w3.org/2005/Atom}title") is not None


def _channel_texts(renderer: Renderer, a: Announcement) -> dict[str, str]:
    r = renderer.render(a, channels=("email", "mastodon", "telegram", "web"))
    assert r.email and r.mastodon and r.telegram and r.web
    return {
        "email.html": r.email.html,
        "email.txt": r.email.text,
        "mastodon": "\n\n".join(post.text for post in r.mastodon.posts),
        "telegram": "\n\n".join(message.text for message in r.telegram.messages),
        "web": r.web.html,
    }


def test_thanks_reads_intro_partners_closing_on_every_channel(renderer: Renderer) -> None:
    a = announce(
        blocks=[
            {
                "type": "thanks",
                "intro": "Möglich wurde das durch:",
                "partners": [{"name": "Stadt Mainz", "role": "funded_by"}],
                "closing": "Bis zum nächsten Mal!",
            }
        ]
    )
    for channel, text in _channel_texts(renderer, a).items():
        order = [text.index(part) for part in ("Möglich", "Stadt Mainz", "Bis zum nächsten Mal!")]
        assert order == sorted(order), channel


def test_link_description_and_label_never_share_a_line(renderer: Renderer) -> None:
    a = announce(
        blocks=[
            {
                "type": "link",
                "description": "Alle Fotos des Tages",
                "label": "Fotos ansehen",
                "url": "https://bzi.example.org/fotos",
            }
        ]
    )
    for channel, text in _channel_texts(renderer, a).items():
        description_at, label_at = text.index("Alle Fotos des Tages"), text.index("Fotos ansehen")
        assert description_at < label_at, channel
        assert "\n" in text[description_at:label_at], channel
