"""A local Telegram Bot API server (aiohttp) that behaves like the real one where we depend on it.

Follows https://core.telegram.org/bots/api:
- "Making requests": ``/bot<token>/<method>``, GET or POST with query string, form or JSON;
  replies ``{"ok": true, "result": …}`` or ``{"ok": false, "error_code", "description",
  "parameters"}``; a wrong token gets 401 "Unauthorized".
- "Formatting options" / "HTML style": parsed by ``bzi_broadcast.render.telegram_html`` (400
  "Bad Request: can't parse entities: …"); text length counted after entity parsing, at most
  4096 UTF-16 units ("message is too long"), captions at most 1024 ("message caption is too
  long").
- "ResponseParameters": ``retry_after`` on 429 flood control, ``migrate_to_chat_id`` when a group
  became a supergroup. Limits from the bots FAQ ("My bot is hitting limits"): about 30 messages
  per second overall, one per second per chat, 20 per minute per group (configurable, scaled in
  benchmarks).
- "getUpdates" (long polling with ``offset``/``timeout``; 409 while a webhook is set, and 409
  "terminated by other getUpdates request" to a poll that a second poller overtakes),
  "setWebhook" (with ``secret_token``), "deleteWebhook", "getMe", "sendMessage", "sendPhoto".
- The bot's side of a conversation: "Update" with a "Message" (``bot_command`` entities as
  "MessageEntity" describes them) or a "CallbackQuery" from an "InlineKeyboardMarkup" button
  (``callback_data`` 1–64 bytes); "answerCallbackQuery" (once per query, text 0–200
  characters), "editMessageText" (only the bot's own messages; "message is not modified" when
  nothing changes; without ``reply_markup`` the inline keyboard goes), "setMyCommands"
  ("BotCommand": 1–32 characters of a–z, 0–9 and _, a description of 1–256 characters, at most
  100 commands).
Blocked users answer 403 "Forbidden: bot was blocked by the user"; unknown chats 400 "Bad Request:
chat not found". Everything received is recorded; faults can be injected per method.

    python -m bzi_broadcast.testing.telegram --port 8082 --token 123:TEST
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bzi_broadcast.render.telegram_html import TelegramHTMLError, parse, utf16_length

JSON_FIELDS = frozenset(
    {
        "link_preview_options",
        "reply_markup",
        "reply_parameters",
        "allowed_updates",
        "entities",
        "caption_entities",
        "commands",
        "scope",
    }
)
COMMAND = re.compile(r"(?<![^\s])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
BOT_COMMAND = re.compile(r"^[a-z0-9_]{1,32}$")
SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


UPLOAD = "<uploaded file>"  # a multipart file part, as recorded in the parameters


@dataclass(frozen=True, kw_only=True)
class Limits:
    per_second: float = 30.0  # all chats together
    per_chat_per_second: float = 1.0
    per_group_per_minute: float = 20.0


@dataclass(kw_only=True)
class Chat:
    id: int
    type: str = "private"  # private, group, supergroup, channel
    title: str | None = None
    blocked: bool = False
    migrated_to: int | None = None


@dataclass(frozen=True, kw_only=True)
class Fault:
    status: int = 500
    description: str = "Internal Server Error"
    retry_after: int | None = None
    delay: float = 0.0
    drop: bool = False  # close the connection without an answer


@dataclass
class Sent:
    method: str
    chat_id: int
    message_id: int
    text: str
    entities: list[dict[str, Any]]
    params: dict[str, Any]
    at: float


@dataclass
class _Poll:
    """A getUpdates call waiting for updates (long polling)."""

    woken: asyncio.Event
    request: web.Request | None
    terminated: bool = False


class ApiError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


@dataclass
class TelegramServer:
    token: str = "123456:TEST-TOKEN"  # noqa: S105 - the local server's own test token
    limits: Limits = field(default_factory=Limits)
    chats: dict[int, Chat] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    flood_answers: int = 0
    webhook_url: str = ""
    files: set[str] = field(default_factory=set)  # file ids issued for uploaded photos
    accept_private: bool = False  # any positive chat id is a private chat that started the bot
    webhook_secret: str = ""
    edits: list[Sent] = field(default_factory=list)  # editMessageText calls, as applied
    answers: dict[str, str] = field(default_factory=dict)  # callback query id → answer text
    commands: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # language → menu
    conflicts: int = 0  # long polls ended because another getUpdates came in

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._update_id = 0
        self._poll: _Poll | None = None
        self._request: web.Request | None = None  # set per call; tells pollers apart
        self._queries: dict[str, bool] = {}  # callback query id → answered
        self._query_ids = itertools.count(1)
        self._global: deque[float] = deque()
        self._per_chat: dict[int, deque[float]] = defaultdict(deque)
        self._message_ids: dict[int, int] = defaultdict(int)

    # --- test controls ------------------------------------------------------------------------

    def add_chat(self, chat_id: int, **options: Any) -> Chat:
        chat = Chat(id=chat_id, **options)
        self.chats[chat_id] = chat
        return chat

    def inject(self, method: str, fault: Fault, times: int = 1) -> None:
        self.faults[method].extend([fault] * times)

    def push_update(self, update: dict[str, Any]) -> None:
        self._update_id += 1
        self._updates.append({"update_id": self._update_id, **update})
        if self._poll is not None:
            self._poll.woken.set()

    def push_message(self, chat_id: int, text: str, **options: Any) -> dict[str, Any]:
        """A person writes ``text`` to the bot (see ``message_update``); returns the message."""
        update = self.message_update(chat_id, text, **options)
        self.push_update(update)
        return dict(update["message"])

    def message_update(
        self,
        chat_id: int,
        text: str,
        *,
        chat_type: str = "private",
        user_id: int | None = None,
        language_code: str = "de",
    ) -> dict[str, Any]:
        """The update (without ``update_id``) for a message from a person; commands are marked as
        Telegram marks them."""
        chat = self.chats.get(chat_id) or self.add_chat(
            chat_id, type=chat_type, title=None if chat_type == "private" else "Gruppe"
        )
        self._message_ids[chat.id] += 1
        message: dict[str, Any] = {
            "message_id": self._message_ids[chat.id],
            "date": int(time.time()),
            "chat": _chat_json(chat),
            "from": _user(user_id or chat_id, language_code),
            "text": text,
        }
        if entities := _command_entities(text):
            message["entities"] = entities
        return {"message": message}

    def push_callback(
        self, chat_id: int, message_id: int, data: str, *, language_code: str = "de"
    ) -> str:
        """The person of a private chat presses the button with ``data`` under a bot message."""
        chat, sent = self.chats[chat_id], self._own_message(chat_id, message_id)
        rows = (sent.params.get("reply_markup") or {}).get("inline_keyboard", [])
        pressable = [button.get("callback_data") for row in rows for button in row]
        if data not in pressable:
            raise ValueError(f"message {message_id} has no button with callback_data {data!r}")
        query_id = str(next(self._query_ids))
        self._queries[query_id] = False
        self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": _user(chat_id, language_code),
                    "chat_instance": str(chat_id),
                    "message": _message_json(chat, sent),
                    "data": data,
                }
            }
        )
        return query_id

    def messages_to(self, chat_id: int) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id]

    # --- HTTP -------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/_test/sent", self._recorded)
        app.router.add_get("/_test/stats", self._stats)
        app.router.add_post("/_test/fault/{method}", self._add_fault)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await _params(request)
        self.calls.append((method, params))
        if request.match_info["token"] != self.token:
            return _error(ApiError(401, "Unauthorized"))
        if (fault := self._next_fault(method)) is not None:
            return await self._fault(request, fault)
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            return _error(ApiError(404, "Not Found"))
        self._request = request  # read before the handler's first await
        try:
            return web.json_response({"ok": True, "result": await handler(params)})
        except ApiError as exc:
            return _error(exc)

    def _next_fault(self, method: str) -> Fault | None:
        queue = self.faults.get(method)
        return queue.popleft() if queue else None

    async def _fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop and request.transport is not None:
            request.transport.close()
            return web.Response(status=500)
        extra = {"retry_after": fault.retry_after} if fault.retry_after is not None else {}
        return _error(ApiError(fault.status, fault.description, **extra))

    async def _stats(self, request: web.Request) -> web.Response:
        times = sorted(s.at for s in self.sent)
        return web.json_response(
            {
                "sent": len(times),
                "first": times[0] if times else None,
                "last": times[-1] if times else None,
                "flood_answers": self.flood_answers,
            }
        )

    async def _add_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.inject(request.match_info["method"], Fault(**body))
        return web.json_response({"ok": True})

    async def _recorded(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "method": s.method,
                    "chat_id": s.chat_id,
                    "text": s.text,
                    "message_id": s.message_id,
                    "at": s.at,  # arrival, seconds since 1970
                }
                for s in self.sent
            ]
        )

    # --- methods ------------------------------------------------------------------------------

    async def _m_getme(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": int(self.token.split(":")[0]),
            "is_bot": True,
            "first_name": "BZI",
            "username": "bzi_test_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _m_sendmessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        text, entities = _parse(params.get("text", ""), params.get("parse_mode"))
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_length(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        _checked_markup(params.get("reply_markup"))
        return self._deliver("sendMessage", chat, text, entities, params)

    async def _m_sendphoto(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        photo = params.get("photo")
        if not photo:
            raise ApiError(400, "Bad Request: there is no photo in the request")
        # sendPhoto: "Pass a file_id … pass an HTTP URL … or upload a new photo using
        # multipart/form-data"
        if not (
            photo == UPLOAD or photo.startswith(("http://", "https://")) or photo in self.files
        ):
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        caption, entities = _parse(params.get("caption", ""), params.get("parse_mode"))
        if utf16_length(caption) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        return self._deliver("sendPhoto", chat, caption, entities, params)

    async def _m_getupdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        self._overtake_poll()
        offset = int(params.get("offset") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and float(params.get("timeout") or 0) > 0:
            poll = self._poll = _Poll(woken=asyncio.Event(), request=self._request)
            try:
                with contextlib.suppress(TimeoutError):  # no update: an empty answer
                    await asyncio.wait_for(poll.woken.wait(), float(params["timeout"]))
            finally:
                if self._poll is poll:
                    self._poll = None
            if poll.terminated:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running",
                )
        limit = int(params.get("limit") or 100)
        return self._updates[:limit]

    def _overtake_poll(self) -> None:
        """A second getUpdates ends a long poll still waiting, unless its client already left."""
        poll, self._poll = self._poll, None
        if poll is None or poll.request is None:
            return
        transport = poll.request.transport
        if transport is not None and not transport.is_closing():
            poll.terminated = True
            self.conflicts += 1
        poll.woken.set()

    async def _m_setwebhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        if url and not url.startswith("https://"):
            raise ApiError(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = str(params.get("secret_token") or "")
        if secret and not SECRET_TOKEN.match(secret):  # "1-256 characters … A-Z, a-z, 0-9, _ -"
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        self.webhook_url, self.webhook_secret = url, secret
        return True

    async def _m_deletewebhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url = self.webhook_secret = ""
        return True

    async def _m_answercallbackquery(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if self._queries.get(query_id) is not False:  # unknown, or answered already
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        text = str(params.get("text") or "")
        if len(text) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self._queries[query_id] = True
        self.answers[query_id] = text
        return True

    async def _m_editmessagetext(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        sent = self._own_message(chat.id, params.get("message_id"))
        text, entities = _parse(params.get("text", ""), params.get("parse_mode"))
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_length(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        markup = _checked_markup(params.get("reply_markup"))
        if (text, entities, markup) == (sent.text, sent.entities, sent.params.get("reply_markup")):
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        sent.text, sent.entities = text, entities
        sent.params = {k: v for k, v in sent.params.items() if k != "reply_markup"}
        if markup is not None:
            sent.params["reply_markup"] = markup
        self.edits.append(Sent(**{**vars(sent), "method": "editMessageText", "at": time.time()}))
        return {**_message_json(chat, sent), "edit_date": int(time.time())}

    async def _m_setmycommands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: commands must be an array of at most 100 commands")
        menu = []
        for command in commands:
            name, description = str(command.get("command", "")), str(command.get("description", ""))
            if not BOT_COMMAND.match(name):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(description) <= 256:
                raise ApiError(400, "Bad Request: command description must be non-empty")
            menu.append((name, description))
        self.commands[str(params.get("language_code") or "")] = menu
        return True

    # --- helpers --------------------------------------------------------------------------------

    def _own_message(self, chat_id: int, message_id: Any) -> Sent:
        for sent in self.sent:
            if sent.chat_id == chat_id and str(sent.message_id) == str(message_id):
                return sent
        raise ApiError(400, "Bad Request: message to edit not found")

    def _chat(self, params: dict[str, Any]) -> Chat:
        try:
            chat_id = int(params.get("chat_id", ""))
        except ValueError:
            raise ApiError(400, "Bad Request: chat not found") from None
        chat = self.chats.get(chat_id)
        if chat is None and self.accept_private and chat_id > 0:
            chat = self.add_chat(chat_id)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        if chat.migrated_to is not None:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=chat.migrated_to,
            )
        if chat.blocked:
            reason = (
                "bot was blocked by the user"
                if chat.type == "private"
                else "bot was kicked from the group chat"
            )
            raise ApiError(403, f"Forbidden: {reason}")
        self._flood_control(chat)
        return chat

    def _flood_control(self, chat: Chat) -> None:
        now = time.monotonic()
        group = chat.type in ("group", "supergroup")
        window, allowed = (
            (60.0, self.limits.per_group_per_minute)
            if group
            else (1.0, self.limits.per_chat_per_second)
        )
        for timestamps, span, limit in (
            (self._global, 1.0, self.limits.per_second),
            (self._per_chat[chat.id], window, allowed),
        ):
            while timestamps and timestamps[0] <= now - span:
                timestamps.popleft()
            if len(timestamps) >= limit:
                self.flood_answers += 1
                wait = max(1, math.ceil(timestamps[0] + span - now))
                raise ApiError(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
        self._global.append(now)
        self._per_chat[chat.id].append(now)

    def _deliver(
        self,
        method: str,
        chat: Chat,
        text: str,
        entities: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> dict[str, Any]:
        self._message_ids[chat.id] += 1
        message_id = self._message_ids[chat.id]
        self.sent.append(
            Sent(
                method=method,
                chat_id=chat.id,
                message_id=message_id,
                text=text,
                entities=entities,
                params=params,
                at=time.time(),
            )
        )
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat.id, "type": chat.type},
        }
        if chat.title:
            message["chat"]["title"] = chat.title
        key = "caption" if method == "sendPhoto" else "text"
        message[key] = text
        if entities:
            message["caption_entities" if key == "caption" else "entities"] = entities
        if method == "sendPhoto":
            photo = params["photo"]
            file_id = photo if photo in self.files else f"photo-{len(self.files) + 1}"
            self.files.add(file_id)
            message["photo"] = [
                {
                    "file_id": file_id,
                    "file_unique_id": "u",
                    "width": 800,
                    "height": 600,
                }
            ]
        return message


def _chat_json(chat: Chat) -> dict[str, Any]:
    if chat.type == "private":
        return {"id": chat.id, "type": "private", "first_name": "Test"}
    return {"id": chat.id, "type": chat.type, "title": chat.title or "Gruppe"}


def _user(user_id: int, language_code: str) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": "Test", "language_code": language_code}


def _message_json(chat: Chat, sent: Sent) -> dict[str, Any]:
    """A text message the bot sent, as Telegram returns it (with its inline keyboard)."""
    message: dict[str, Any] = {
        "message_id": sent.message_id,
        "date": int(sent.at),
        "chat": _chat_json(chat),
        "from": {"id": 0, "is_bot": True, "first_name": "BZI", "username": "bzi_test_bot"},
        "text": sent.text,
    }
    if sent.entities:
        message["entities"] = sent.entities
    if markup := sent.params.get("reply_markup"):
        message["reply_markup"] = markup
    return message


def _command_entities(text: str) -> list[dict[str, Any]]:
    """``bot_command`` entities ("MessageEntity"), offsets and lengths in UTF-16 code units."""
    return [
        {
            "type": "bot_command",
            "offset": utf16_length(text[: match.start()]),
            "length": utf16_length(match.group()),
        }
        for match in COMMAND.finditer(text)
    ]


def _checked_markup(markup: Any) -> dict[str, Any] | None:
    """An "InlineKeyboardMarkup": rows of buttons with text and 1–64 bytes of callback_data."""
    if not isinstance(markup, dict) or "inline_keyboard" not in markup:
        return None
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(400, 'Bad Request: field "inline_keyboard" must be an Array of Array')
    for button in itertools.chain.from_iterable(rows):
        if not str(button.get("text") or ""):
            raise ApiError(400, "Bad Request: BUTTON_TEXT_EMPTY")
        data = button.get("callback_data")
        if data is not None and not 1 <= len(str(data).encode()) <= 64:
            raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return dict(markup)


def _parse(text: str, parse_mode: str | None) -> tuple[str, list[dict[str, Any]]]:
    if parse_mode != "HTML":
        return text.strip(), []
    try:
        parsed = parse(text)
    except TelegramHTMLError as exc:
        raise ApiError(400, f"Bad Request: {exc}") from None
    entities = [{k: v for k, v in vars(e).items() if v is not None} for e in parsed.entities]
    return parsed.text, entities


async def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            for key, value in (await request.post()).items():
                params[key] = value if isinstance(value, str) else UPLOAD
    for key in JSON_FIELDS & params.keys():
        if isinstance(params[key], str):
            params[key] = json.loads(params[key])
    return params


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
    if exc.parameters:
        body["parameters"] = exc.parameters
    return web.json_response(body, status=exc.code)


def main() -> None:
    # The server keeps every message it received; the collector's full passes over that growing
    # record would stall it for tens of milliseconds, and requests arriving together after a stall
    # look like a burst to the flood control. Young garbage is still collected.
    gc.set_threshold(700, 10, 100_000)
    parser = argparse.ArgumentParser(description="Local Telegram Bot API server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--token", default="123456:TEST-TOKEN")
    parser.add_argument(
        "--chat",
        type=int,
        action="append",
        default=[],
        help="a private chat id to accept (repeatable)",
    )
    parser.add_argument(
        "--accept-private",
        action="store_true",
        help="accept every positive chat id as a private chat",
    )
    parser.add_argument("--per-second", type=float, default=30.0)
    parser.add_argument("--per-chat-per-second", type=float, default=1.0)
    args = parser.parse_args()
    server = TelegramServer(
        token=args.token,
        accept_private=args.accept_private,
        limits=Limits(per_second=args.per_second, per_chat_per_second=args.per_chat_per_second),
    )
    for chat_id in args.chat:
        server.add_chat(chat_id)
    web.run_app(server.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
