"""The REST API's route table entries and the OpenAPI 3.1 document generated from them.

``Operation`` says everything about one endpoint: method, path, handler, the role it needs, its
query model, body and answers. The API registers its routes from the same list it documents, so
routing and document cannot drift apart. JSON Schemas come from the pydantic models; their
``$defs`` become ``components/schemas``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bzi_broadcast import __version__
from bzi_broadcast.staff.accounts import Role
from bzi_broadcast.web.api_io import Call
from bzi_broadcast.web.api_models import MAX_ID, Problem
from bzi_broadcast.web.api_problems import PROBLEM_JSON

ApiHandler = Callable[[Call], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"
_PATH_PARAMETER = re.compile(r"\{(\w+)\}")
Refs = Mapping[tuple[type[Any], JsonSchemaMode], dict[str, Any]]
_HEADERS = {
    "ETag": "The version, quoted: send it back as If-Match to change this announcement.",
    "Location": "Where the new resource is.",
}


@dataclass(frozen=True, kw_only=True)
class Reply:
    """A successful answer of an operation."""

    description: str
    status: int = 200
    model: type[BaseModel] | None = None  # None: no body, or text (see media_types)
    media_types: tuple[str, ...] = ("application/json",)
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Operation:
    method: str
    path: str  # relative to /api/v1, in OpenAPI's and aiohttp's common syntax: /x/{id}
    handler: ApiHandler
    summary: str
    replies: tuple[Reply, ...]
    role: Role | None = Role.EDITOR  # None: no token needed
    query: type[BaseModel] | None = None
    body: type[BaseModel] | str | None = None  # a model (JSON), or a text media type
    if_match: Literal["required", "optional"] | None = None
    problems: tuple[int, ...] = ()  # statuses beyond those the shape above implies

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.lstrip("_")

    @property
    def path_parameters(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.path)

    def problem_statuses(self) -> list[int]:
        statuses = set(self.problems)
        if self.role is not None:
            statuses |= {401, 403}
        if self.path_parameters:
            statuses.add(404)
        if self.query is not None:
            statuses.add(400)
        if self.body is not None:
            statuses |= {400, 413, 415, 422}
        if self.if_match is not None:
            statuses.add(412)
        if self.if_match == "required":
            statuses.add(428)
        return sorted(statuses)


def document(operations: Sequence[Operation]) -> dict[str, Any]:
    schemas, refs = _schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, refs, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bzi-broadcast",
            "version": __version__,
            "description": "Write an announcement once; publish it as email newsletter, "
            "Mastodon thread and Telegram messages. Errors are RFC 9457 problem details in "
            "the caller's language (Accept-Language: de, en; German by default).",
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `bzi-broadcast users token EMAIL --name NAME`",
                }
            },
        },
    }


def _schemas(
    operations: Sequence[Operation],
) -> tuple[dict[str, Any], Refs]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Problem, "serialization")]
    for operation in operations:
        if isinstance(operation.body, type):
            wanted.append((operation.body, "validation"))
        wanted.extend((reply.model, "serialization") for reply in operation.replies if reply.model)
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    for model in {operation.query for operation in operations if operation.query}:
        for name, schema in model.model_json_schema(ref_template=REF).get("$defs", {}).items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different schemas named {name}")
    return schemas, refs


def _operation(
    operation: Operation,
    refs: Refs,
    schemas: dict[str, Any],
) -> dict[str, Any]:
    role = operation.role
    result: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "description": f"Role: {role} or above." if role else "No token needed.",
        "security": [{"bearer": []}] if role else [],
        "parameters": list(_parameters(operation, schemas)),
        "responses": _responses(operation, refs),
    }
    if role is not None:
        result["x-required-role"] = str(role)
    if operation.body is not None:
        result["requestBody"] = _request_body(operation.body, refs)
    return result


def _parameters(operation: Operation, schemas: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for name in operation.path_parameters:
        integer = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        yield {"name": name, "in": "path", "required": True, "schema": integer}
    if operation.if_match is not None:
        yield {
            "name": "If-Match",
            "in": "header",
            "required": operation.if_match == "required",
            "description": 'The version the change is based on, as the ETag gave it: "3"',
            "schema": {"type": "string"},
        }
    if operation.query is not None:
        schema = operation.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", ()))
        for name, field in schema["properties"].items():
            parameter = {"name": name, "in": "query", "required": name in required}
            if "description" in field:
                parameter["description"] = field["description"]
            yield parameter | {"schema": _without_null(field)}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "description", "title")}
    if len(options) == 1:
        return dict(options[0]) | {k: v for k, v in rest.items() if v is not None}
    return rest | ({"anyOf": options} if options else {})


def _request_body(body: type[BaseModel] | str, refs: Refs) -> dict[str, Any]:
    if isinstance(body, str):
        return {"required": True, "content": {body: {"schema": {"type": "string"}}}}
    return {"required": True, "content": {"application/json": {"schema": refs[body, "validation"]}}}


def _responses(operation: Operation, refs: Refs) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for reply in operation.replies:
        answer: dict[str, Any] = {"description": reply.description}
        if reply.model is not None or reply.status != 204:
            answer["content"] = {
                media: {"schema": _reply_schema(reply.model, media, refs)}
                for media in reply.media_types
            }
        if reply.headers:
            answer["headers"] = {
                name: {"description": _HEADERS[name], "schema": {"type": "string"}}
                for name in reply.headers
            }
        responses[str(reply.status)] = answer
    problem = {"schema": refs[Problem, "serialization"]}
    for status in operation.problem_statuses():
        answer = {"description": _DESCRIPTIONS[status], "content": {PROBLEM_JSON: problem}}
        if status == 401:
            answer["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            }
        responses[str(status)] = answer
    return responses


def _reply_schema(
    model: type[BaseModel] | None,
    media: str,
    refs: Refs,
) -> dict[str, Any]:
    if not media.endswith("json"):
        return {"type": "string"}
    return {"type": "object"} if model is None else dict(refs[model, "serialization"])


_DESCRIPTIONS = {
    400: "Malformed JSON or invalid parameters",
    401: "No token, or an unknown or revoked one",
    403: "The caller's role does not allow this",
    404: "No such resource",
    409: "Not possible in the current status",
    412: "If-Match names an older version",
    413: "The body is too large",
    415: "The body is not of the expected media type",
    422: "Invalid values; `errors` names each",
    428: "If-Match is required",
}
