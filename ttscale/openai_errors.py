"""ttscale's errors in OpenAI's shape: the one mapping from an error to the status, type and param
an OpenAI-compatible server answers with.

The proxy answers with that shape (:func:`error_shape`, through ``ttscale.serving.error_for``);
a wrapped client raises, for the same mistake, an error that is both ttscale's and the ``openai``
error the plain client raises for that answer (:func:`as_openai_error`), so code written for the
plain client (``except openai.BadRequestError``) and code written for ttscale (``except
ttscale.RequestError``) both catch it::

    try:
        scaled.chat.completions.create(..., extra_body={"ttscale": {"samples": 0}})
    except openai.BadRequestError as exc:
        exc.status_code, exc.param      # 400, "ttscale.samples": what the proxy answers
        isinstance(exc, ttscale.RequestError)   # True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ttscale.errors import (
    BudgetExhausted,
    ConfigError,
    RequestError,
    SandboxRefused,
    TTScaleError,
    UpstreamError,
)

if TYPE_CHECKING:
    import openai

__all__ = ["ErrorShape", "as_openai_error", "error_kind", "error_shape", "openai_error_class"]

_KINDS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    499: "client_closed_request",
}


def openai_error_class(status: int) -> type[openai.APIStatusError]:
    """The openai client's error class for an HTTP answer of ``status`` (>= 300), as it chooses
    it. (``openai`` is imported here, when one is raised: the proxy never needs it.)"""
    import openai

    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    found = classes.get(status)
    if found is not None:
        return found
    return openai.InternalServerError if status >= 500 else openai.APIStatusError


# What openai's error constructors set; everything else on a ttscale error is carried over.
_OPENAI_FIELDS = frozenset(
    {"request", "message", "body", "code", "type", "response", "status_code", "request_id"}
)


def error_kind(status: int) -> str:
    """The OpenAI error ``type`` for an HTTP status."""
    return _KINDS.get(status, "invalid_request_error" if status < 500 else "upstream_error")


@dataclass(frozen=True)
class ErrorShape:
    """An error as an OpenAI-compatible server answers it: status and the ``error`` object."""

    status: int
    message: str
    param: str | None
    type: str

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": None}
        return {"error": error}


def error_shape(exc: BaseException) -> ErrorShape | None:
    """The answer to a request refused for what it asked; None for any other failure.

    Every :class:`ConfigError` is the client's 400 naming its field (a :class:`RequestError` may
    carry another 4xx); code execution refused is a 403; a budget that ended before an answer is
    a 400 naming ``ttscale.budget``.
    """
    if isinstance(exc, RequestError):
        return ErrorShape(exc.status, str(exc), exc.param, error_kind(exc.status))
    if isinstance(exc, ConfigError):
        return ErrorShape(400, str(exc), exc.param, error_kind(400))
    if isinstance(exc, SandboxRefused):
        message = (
            f"{exc} (this server does not run model-written code: ttscale serve "
            "--allow-code-execution)"
        )
        return ErrorShape(403, message, "ttscale.verifier", error_kind(403))
    if isinstance(exc, BudgetExhausted):
        message = f"the request's budget ended before an answer: {exc}"
        return ErrorShape(400, message, "ttscale.budget", error_kind(400))
    return None


_CLASSES: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def _both(ours: type[Any], theirs: type[Any]) -> type[Any]:
    # ttscale's class first: its own constructor is never called (openai's is), and openai's
    # super().__init__(message) then reaches Exception's.
    both = _CLASSES.get((ours, theirs))
    if both is None:
        both = _CLASSES[ours, theirs] = type(
            ours.__name__, (ours, theirs), {"__module__": ours.__module__}
        )
    return both


def as_openai_error(exc: TTScaleError, url: str) -> TTScaleError:
    """``exc`` as it would reach the plain ``openai`` client from a server at ``url``.

    A request refused for what it asked (:func:`error_shape`) or an upstream's own error status
    (:class:`UpstreamError` with a status) becomes an instance of both ``exc``'s class and the
    ``openai`` error for that status (``openai.BadRequestError`` for a 400), built over a real
    ``httpx2.Response`` carrying the OpenAI-shaped body, with ``exc``'s fields (``param``,
    ``partial``, ...). Any other error is returned as it is.
    """
    shape = error_shape(exc)
    if shape is not None:
        status, body = shape.status, shape.body()
    elif isinstance(exc, UpstreamError) and exc.status_code is not None:
        status = exc.status_code
        inner = exc.body if isinstance(exc.body, dict) else {"message": str(exc)}
        body = {"error": inner}
    else:
        return exc
    import httpx2

    response = httpx2.Response(status, json=body, request=httpx2.Request("POST", url))
    theirs = openai_error_class(status)
    cls: Any = _both(type(exc), theirs)
    error: Any = cls.__new__(cls)
    detail = body["error"].get("message") if isinstance(body["error"], dict) else None
    message = f"Error code: {status}" + (f" - {detail}" if detail else "")
    theirs.__init__(error, message, response=response, body=body["error"])
    for name, value in vars(exc).items():
        if name not in _OPENAI_FIELDS:
            setattr(error, name, value)
    error.args = (message,)
    built: TTScaleError = error
    return built
