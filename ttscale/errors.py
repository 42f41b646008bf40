"""The one error tree of ttscale.

Every error the library raises on purpose derives from :class:`TTScaleError`, so a caller can
catch the whole family with one ``except``. Lower-level exceptions are chained with
``raise ... from exc``.

A :class:`ConfigError` names the field it is about in ``param`` (``"ttscale.samples"``,
``"messages[2].role"``) where one is known. Nothing here knows HTTP: the proxy alone maps these
errors to statuses (every :class:`ConfigError` is the client's fault, a 4xx naming ``param``).

::

    TTScaleError
    ├── ConfigError              bad settings or arguments given to a component; names the field
    │   ├── UnknownNameError     a registry lookup found no such sampler, strategy or verifier
    │   ├── UnknownOptionError   a component was given options it does not have
    │   └── RequestError         an OpenAI-style request (proxy, wrapped client) is invalid
    ├── DataError                bad input data; names the file, line and field where known
    ├── SamplerError             a sampler could not deliver the samples it was asked for
    │   ├── UpstreamError        the model server failed after the client's own retries
    │   └── EndpointsDown        (ttscale.samplers.pool) every endpoint of a pool is down
    ├── BudgetExhausted          a budget limit was reached before the work was done
    │   └── BudgetLimitReached   (ttscale.budget) a limit refused a draw; carries what was spent
    └── VerifierError            a verifier could not score a candidate
        └── SandboxRefused       running model-written code was not explicitly allowed
"""

from __future__ import annotations

from typing import Any

from ttscale.words import plural

__all__ = [
    "BudgetExhausted",
    "ConfigError",
    "DataError",
    "RequestError",
    "SamplerError",
    "SandboxRefused",
    "TTScaleError",
    "UnknownNameError",
    "UnknownOptionError",
    "UpstreamError",
    "VerifierError",
]


class TTScaleError(Exception):
    """Root of every error ttscale raises on purpose."""


class ConfigError(TTScaleError, ValueError):
    """A component was given settings or arguments it cannot work with.

    ``param`` names the offending field where it is known, else None.
    """

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class UnknownNameError(ConfigError, LookupError):
    """A name was looked up in a registry (entry-point group) that does not hold it."""

    def __init__(self, kind: str, name: str, known: list[str], *, param: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(
            f"unknown {kind} {name!r}; registered {plural(kind)}: {listing}", param=param
        )


class UnknownOptionError(ConfigError):
    """A component was given options it does not have; ``options`` lists them, sorted."""

    def __init__(self, message: str, *, options: list[str], param: str | None = None) -> None:
        self.options = sorted(options)
        super().__init__(message, param=param if param is not None else self.options[0])


class RequestError(ConfigError):
    """An OpenAI-style request to the proxy or a wrapped client cannot be served as asked.

    ``param`` names the offending field (``"ttscale.samples"``, ``"messages[2].role"``).
    ``status`` is set only where the request is well formed but cannot be served as asked (a
    413-like size, a 404 for a route); otherwise the proxy answers 400.
    """

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        self.status = status
        super().__init__(message, param=param)


class DataError(TTScaleError, ValueError):
    """Input data is malformed; the message names where (file, line, field) when that is known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = ":".join(str(part) for part in (path, line) if part is not None)
        prefix = f"{where}: " if where else ""
        suffix = f" (field {field!r})" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")


class SamplerError(TTScaleError):
    """A sampler could not deliver the samples it was asked for.

    ``partial`` holds what the draw did get before it failed (a ``SampleBatch``), so that samples
    already paid for are never lost with the error.
    """

    def __init__(self, message: str, *, partial: Any = None) -> None:
        self.partial = partial
        super().__init__(message)


class UpstreamError(SamplerError):
    """The model server answered with an error that the client's retries did not get past."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        partial: Any = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(message, partial=partial)


class BudgetExhausted(TTScaleError):
    """A budget limit (samples, tokens, cost or time) was reached."""


class VerifierError(TTScaleError):
    """A verifier could not score a candidate.

    ``partial`` holds, where the work that needed the score knows it, what that work had drawn
    and spent before the failure (a ``SampleBatch``): a step-level search that its process reward
    failed, say.
    """

    def __init__(self, *args: object, partial: Any = None) -> None:
        self.partial = partial
        super().__init__(*args)


class SandboxRefused(VerifierError, PermissionError):
    """Running model-written code needs an explicit opt-in, and none was given."""
