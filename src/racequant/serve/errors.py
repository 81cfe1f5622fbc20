"""Error answers: 422 naming each bad field, 404 naming what is unknown, never a stack trace or a path."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from racequant.errors import RacequantError

logger = logging.getLogger(__name__)

# a model-level check names its field first: "horses[3].horse_id: horse 'H1' is also horses[0]" (several are
# joined by "; ")
_FIELD_FIRST = re.compile(r"^([A-Za-z_]\w*(?:(?:\.\w+)|(?:\[\d+\]))*): (.+)$", re.S)
_PROBLEM_START = re.compile(r"; (?=[A-Za-z_]\w*(?:(?:\.\w+)|(?:\[\d+\]))*: )")


def _dotted(field: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", field)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-~]+){2,}[\\/]?")


def public_message(text: str) -> str:
    """A message fit for a client: file system paths replaced by <path>."""
    return _PATH.sub("<path>", text)


class NotFoundError(RacequantError):
    """A race, horse or job the request names does not exist (answered 404)."""


class ServiceUnavailableError(RacequantError):
    """A part of the service the request needs is not available (answered 503)."""


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def validation_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors as {loc, msg, type, field}: no input echo, no internal context."""
    out = []
    for err in errors:
        loc = list(err.get("loc", ()))
        base = _field(loc)
        kind = str(err.get("type", "value_error"))
        text = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        for part in _PROBLEM_START.split(text) if kind == "value_error" else [text]:
            field, msg = base, part
            match = _FIELD_FIRST.match(part)
            if match and kind == "value_error":
                inner, msg = _dotted(match.group(1)), match.group(2)
                field = f"{base}.{inner}" if base else inner
            out.append({"loc": loc, "msg": f"{field or 'body'}: {msg}", "type": kind, "field": field or "body"})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": validation_detail(list(exc.errors()))})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code, content={"detail": str(exc.detail)}, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": public_message(str(exc))})

    @app.exception_handler(ServiceUnavailableError)
    async def _unavailable(request: Request, exc: ServiceUnavailableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": public_message(str(exc))})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the trace goes to the server log only; the client learns nothing of the internals
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "Internal error; the server log has the details."})
