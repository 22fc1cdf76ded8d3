"""Errors as OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``) with a
4xx or 5xx, never a traceback; the request body's size limit."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse

from perceive.errors import ErrorCode, PerceiveError, error_code


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None, counted: bool = False):
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.counted = counted  # the metrics have it already (a request that reached the model thread)
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)

    def sse(self) -> str:
        """The error after a stream began: OpenAI's clients raise it from the ``error`` key."""
        return f"data: {json.dumps({'error': {'message': self.message, 'type': self.type, 'code': self.code}})}\n\n"


#: trace errors that are the client's mistake (a 400), not the server's, by their documented code
CLIENT_ERRORS = (ErrorCode.INPUT_INVALID.value, ErrorCode.IMAGE_UNREADABLE.value)


def problem_from(exc: BaseException, counted: bool = False) -> HTTPProblem:
    """A request's error as an OpenAI-style problem whose ``code`` is the documented
    :class:`~perceive.errors.ErrorCode` value: a ``PerceiveError`` is the client's (400), anything
    else a bug (500, code ``internal``)."""
    if not isinstance(exc, PerceiveError):
        return HTTPProblem(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error",
                           code=ErrorCode.INTERNAL.value, counted=counted)
    msg = exc.message if getattr(exc, "message", None) else str(exc)
    hint = getattr(exc, "hint", None)
    return HTTPProblem(400, msg + (f" ({hint})" if hint else ""), code=error_code(exc), counted=counted)


class _TooBig(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes with 413, whether or not it declares its
    length."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = HTTPProblem(413, f"the request body is over the server's limit of {self.limit} bytes",
                              code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big.response()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooBig
            return message

        try:
            await self.app(scope, counted, send)
        except _TooBig:
            await too_big.response()(scope, receive, send)
