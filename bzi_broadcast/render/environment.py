"""The one Jinja2 environment every channel renders with.

Templates come from the packaged ``templates/`` directory, shadowed by an organisation's override
directory. Autoescaping is on for HTML, Atom and the shared partials; a partial's plain-text
macros switch it off explicitly (``{% autoescape false %}``), so each block is still written once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from bzi_broadcast.content.model import Block
from bzi_broadcast.errors import TemplateError
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import colours, filters, markup

PACKAGED_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
_ESCAPED_SUFFIXES = (".html.j2", ".atom.j2", ".xml.j2")
FORMATS = ("email_html", "text", "mastodon", "telegram", "web")


def _autoescape(name: str | None) -> bool:
    if name is None:
        return True
    return name.endswith(_ESCAPED_SUFFIXES) or name.startswith(("blocks/", "layouts/"))


def create_environment(override_dir: Path | None = None) -> jinja2.Environment:
    """Build the environment; check every template compiles, so a broken override fails now."""
    search_path = [str(override_dir)] if override_dir else []
    search_path.append(str(templates_root()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_path),
        autoescape=_autoescape,  # noqa: S701 - chosen per template: HTML, Atom, partials
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        extensions=["jinja2.ext.i18n"],
        auto_reload=False,
        cache_size=-1,
    )
    env.install_gettext_callables(_translate, _ntranslate, newstyle=True)  # type: ignore[attr-defined]
    env.globals["render_block"] = partial(_render_block, env)
    env.globals["quote_marks"] = filters.quote_marks
    env.filters.update(_filters())
    _compile_all(env)
    return env


def templates_root() -> Path:
    """Packaged templates: beside the package in a checkout, inside it when installed."""
    installed = Path(__file__).resolve().parents[1] / "_templates"
    return installed if installed.is_dir() else PACKAGED_TEMPLATES


def _translate(message: str, **variables: Any) -> str:
    text = _(message)
    return text % variables if variables else text


def _ntranslate(singular: str, plural: str, n: int, **variables: Any) -> str:
    from bzi_broadcast.i18n import ngettext

    text = ngettext(singular, plural, n)
    return text % variables if variables else text


def _render_block(env: jinja2.Environment, block: Block, fmt: str, **options: Any) -> Markup:
    module = env.get_template(f"blocks/{block.type}.j2").module
    macro: Callable[..., Markup] = getattr(module, fmt)
    return macro(block, **options)


def _filters() -> dict[str, Callable[..., Any]]:
    return {
        "md_html": markup.to_html,
        "md_text": markup.to_text,
        "md_telegram": markup.to_telegram,
        "date_long": filters.date_long,
        "datetime_long": filters.datetime_long,
        "event_when": filters.event_when,
        "quoted": filters.quoted,
        "partner_role": filters.partner_role,
        "one_line": filters.one_line,
        "iso8601": filters.iso8601,
        "paragraphs": filters.paragraphs,
        "nl2br": filters.nl2br,
        "readable_on": colours.readable_on,
    }


def _compile_all(env: jinja2.Environment) -> None:
    for name in env.list_templates(filter_func=lambda n: n.endswith(".j2")):
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            where = f"{exc.filename or exc.name}, " + _("Zeile {line}").format(line=exc.lineno)
            message = _("Vorlage fehlerhaft ({where}): {problem}")
            raise TemplateError(message.format(where=where, problem=exc.message)) from None


N_("Vorlage fehlerhaft ({where}): {problem}")
