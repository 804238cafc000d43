"""``bzi-broadcast preview``: every channel of an announcement, in the terminal, as JSON or HTML."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from bzi_broadcast.config import RenderSettings, load_settings
from bzi_broadcast.content import load_announcement
from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.i18n import ngettext
from bzi_broadcast.render import CHANNELS, Renderer, Renditions, ThreadLimits
from bzi_broadcast.render.renditions import MastodonRendition, TelegramRendition
from bzi_broadcast.render.social import TELEGRAM_CAPTION_LIMIT, TELEGRAM_MESSAGE_LIMIT


def run_preview(args: argparse.Namespace) -> int:
    settings = _settings(args)
    announcement = load_announcement(args.file)
    limits = _limits(args.mastodon_limit, args.url_length)
    renderer = Renderer(settings)
    channels = CHANNELS if args.channel == "all" else (args.channel,)
    renditions = renderer.render(announcement, channels=channels, mastodon_limits=limits)
    if args.html:
        everything = renderer.render(announcement, mastodon_limits=limits)
        page = renderer.preview_page(announcement, everything)
        _write_atomically(args.html, page)
    if args.json:
        json.dump(renditions.to_json(), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif not args.html:
        print_renditions(renditions, sys.stdout)
    return 0


def _settings(args: argparse.Namespace) -> RenderSettings:
    settings = load_settings(args.config)
    if args.templates:
        if not args.templates.is_dir():
            message = _("Vorlagenverzeichnis {path} existiert nicht").format(path=args.templates)
            raise BroadcastError(message)
        settings = settings.model_copy(update={"templates_dir": args.templates})
    return settings


def _limits(max_characters: int, url_length: int) -> ThreadLimits:
    try:
        return ThreadLimits(max_characters=max_characters, url_length=url_length)
    except ValueError as exc:
        raise BroadcastError(str(exc)) from None


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename: never a half-written page."""
    directory = path.resolve().parent
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=directory, suffix=".tmp", delete=False
        ) as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # a temporary file is private; the page is not
        os.replace(handle.name, path)
    except OSError as exc:
        message = _("{path} kann nicht geschrieben werden: {reason}")
        raise BroadcastError(message.format(path=path, reason=exc.strerror or exc)) from None


def print_renditions(renditions: Renditions, out: TextIO) -> None:
    if renditions.email:
        _heading(out, _("E-Mail"))
        out.write(_("Betreff: {subject}").format(subject=renditions.email.subject) + "\n")
        out.write(_("Vorschautext: {text}").format(text=renditions.email.preheader) + "\n\n")
        out.write(renditions.email.text)
    if renditions.mastodon:
        _print_mastodon(renditions.mastodon, out)
    if renditions.telegram:
        _print_telegram(renditions.telegram, out)


def _heading(out: TextIO, title: str) -> None:
    out.write(f"\n━━━━ {title} " + "━" * max(0, 60 - len(title)) + "\n")


def _print_mastodon(rendition: MastodonRendition, out: TextIO) -> None:
    count = len(rendition.posts)
    _heading(
        out, ngettext("Mastodon – {n} Beitrag", "Mastodon – {n} Beiträge", count).format(n=count)
    )
    for number, post in enumerate(rendition.posts, start=1):
        counter = _("{length}/{limit} Zeichen").format(
            length=post.length, limit=rendition.max_characters
        )
        out.write(f"\n── {number}/{count} · {counter}\n")
        if post.spoiler_text:
            out.write("[" + _("Inhaltswarnung: {text}").format(text=post.spoiler_text) + "]\n")
        out.write(post.text + "\n")


def _print_telegram(rendition: TelegramRendition, out: TextIO) -> None:
    count = len(rendition.messages)
    _heading(
        out,
        ngettext("Telegram – {n} Nachricht", "Telegram – {n} Nachrichten", count).format(n=count),
    )
    for number, message in enumerate(rendition.messages, start=1):
        limit = TELEGRAM_CAPTION_LIMIT if message.photo else TELEGRAM_MESSAGE_LIMIT
        counter = _("{length}/{limit} UTF-16-Einheiten").format(length=message.length, limit=limit)
        photo = " · " + _("Bild: {src}").format(src=message.photo) if message.photo else ""
        out.write(f"\n── {number}/{count} · {counter}{photo}\n{message.text}\n")


__all__ = ["print_renditions", "run_preview"]
