"""What ``ttscale serve`` runs once its options are read: the proxy's settings, its listening
socket and port file, SIGTERM, and uvicorn.

It loads only what serving needs, as a proxy's start-up is the time to its first answer: no
rich (notes go to the ``note`` the command line gives), and the embedded model's module only
when no upstream is given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ttscale.errors import ConfigError
from ttscale.proxy import (
    ProxyConfig,
    create_app,
    load_presets,
    parse_default_option,
    parse_preset_option,
)
from ttscale.settings import RequestLimits, ScaleSettings

__all__ = ["ServeOptions", "default_settings", "http_url", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    """``ttscale serve``'s options, as its ``--help`` describes them."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    host: str = "127.0.0.1"
    port: int = 8000
    port_file: Path | None = None
    presets: Path | None = None
    preset: tuple[str, ...] = ()
    proxy_key_env: str | None = None
    default_strategy: str | None = None
    max_samples: int = 64
    max_tokens: int = 4096
    max_body_bytes: int = 1 << 20
    max_concurrent_requests: int = 256
    concurrency: int = 64
    allow_code_execution: bool = False
    allow_request_endpoints: bool = False


def serve(options: ServeOptions, note: Callable[[str], None]) -> None:
    """Serve the proxy until Ctrl-C or SIGTERM; ``note`` prints a line for the person watching.

    Raises :class:`~ttscale.errors.TTScaleError` for bad options (a missing key variable, a bad
    preset or spec file, a port that cannot be bound).
    """
    proxy_key = _proxy_key(options.proxy_key_env)
    presets = _presets(options)
    with contextlib.ExitStack() as stack:
        upstream_url, upstream_model, counting = options.base_url, options.model, False
        if upstream_url is None:
            from ttscale.local_model import LocalModelServer

            note("starting the embedded model (llama.cpp, CPU)...")
            local = stack.enter_context(LocalModelServer())
            upstream_url, upstream_model = local.base_url, options.model or local.model
            counting = True  # llama.cpp under-reports tokens for n > 1; logprobs count them
        config = ProxyConfig(
            base_url=upstream_url,
            model=upstream_model,
            api_key=os.environ.get(options.api_key_env),
            proxy_key=proxy_key,
            presets=presets,
            default=default_settings(options.default_strategy),
            limits=RequestLimits(max_samples=options.max_samples, max_tokens=options.max_tokens),
            max_body_bytes=options.max_body_bytes,
            max_concurrent_requests=options.max_concurrent_requests,
            upstream_concurrency=options.concurrency,
            allow_code_execution=options.allow_code_execution,
            allow_request_endpoints=options.allow_request_endpoints,
            count_with_logprobs=counting,
        )
        listener = stack.enter_context(_listen(options.host, options.port))
        bound = int(listener.getsockname()[1])
        note(
            f"ttscale proxy on {http_url(options.host, bound)}/v1 -> {upstream_url} "
            f"(presets: {', '.join(sorted(presets)) or 'none'})"
        )
        if options.port_file is not None:
            stack.enter_context(_port_file(options.port_file, bound))
        stack.enter_context(_exit_on_sigterm())
        # No websocket protocol: the proxy has no websocket route, and loading one is start-up.
        server_config = uvicorn.Config(
            create_app(config), log_level="warning", access_log=False, ws="none"
        )
        uvicorn.Server(server_config).run(sockets=[listener])


def _proxy_key(variable: str | None) -> str | None:
    """The key clients must send, from ``--proxy-key-env``'s variable (None: no key)."""
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        raise ConfigError(f"--proxy-key-env {variable} is not set", param="proxy_key_env")
    return key


def _presets(options: ServeOptions) -> dict[str, ScaleSettings]:
    """The presets of ``--presets`` FILE, then of each ``--preset`` (a later one wins)."""
    table = load_presets(options.presets) if options.presets else {}
    for text in options.preset:
        name, settings = parse_preset_option(text)
        table[name] = settings
    return table


def default_settings(strategy: str | None) -> ScaleSettings:
    """The server's default settings for ``--default-strategy``: a registered name, or a graph
    spec file (.json/.yaml), which runs as the ``graph`` strategy with that spec, as in solve."""
    if strategy is not None and ("," in strategy or "=" in strategy):
        return parse_default_option(strategy)  # majority,sampling.temperature=0.7: as a preset
    if strategy is None or not strategy.endswith((".json", ".yaml", ".yml")):
        return ScaleSettings(strategy=strategy)
    from ttscale.strategies.graphs import load_graph

    path = Path(strategy).absolute()  # the server's working directory may change; the file not
    load_graph(path)  # a missing or bad spec fails now, naming the file, not on the first request
    return ScaleSettings(strategy="graph", options={"spec": str(path)})


@contextlib.contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    """A listening TCP socket on ``host``:``port`` (0: a free port the kernel picks), so the
    port is known before the server runs and connections queue until it accepts them."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot bind --host {host} --port {port}: {exc}") from exc
    with listener:
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(2048)
        except OSError as exc:
            raise ConfigError(f"cannot bind --host {host} --port {port}: {exc}") from exc
        yield listener


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM exits through the ``with`` blocks (uvicorn re-raises it after its shutdown), so
    the port file is removed and the embedded model stopped, as on Ctrl-C."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def http_url(host: str, port: int) -> str:
    """``http://host:port``, the host bracketed when it is an IPv6 address."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def _port_file(path: Path, port: int) -> Iterator[None]:
    """``port`` written to ``path`` whole (written beside, then renamed), removed at exit."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(f"{port}\n", encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot write --port-file {path}: {exc.strerror or exc}") from exc
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
