"""Run the loopback OpenAI-compatible server in the foreground: ``python -m ttscale.testing``.

Benchmarks start it in a separate process so that its work does not share their interpreter. Once
it listens it prints exactly one line, ``LISTENING http://127.0.0.1:PORT/v1``, to stdout; it stops
cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ttscale.errors import ConfigError
from ttscale.testing.server import LoopbackServer, ServerConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ttscale.testing",
        description="Serve scripted OpenAI-compatible answers on 127.0.0.1.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every generation request"
    )
    parser.add_argument(
        "--n-support",
        choices=("yes", "reject", "ignore"),
        default="yes",
        help="what a request with n > 1 gets: its choices, a 400, or one choice",
    )
    parser.add_argument(
        "--max-choices", type=int, default=None, help="return at most this many choices"
    )
    parser.add_argument(
        "--answers",
        metavar="FILE.json",
        help="a JSON object mapping a prompt to an answer or to a list of answers cycled by index",
    )
    parser.add_argument(
        "--default-answer",
        default=ServerConfig.default_answer,
        help="the answer to prompts the answers file does not cover",
    )
    parser.add_argument("--model", default=ServerConfig.model, help="the model name served")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level for stderr (default WARNING)"
    )
    return parser


def _load_answers(path: str) -> dict[str, str | list[str]]:
    with open(path, encoding="utf-8") as handle:
        data: Any = json.load(handle)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the answers file must hold a JSON object")
    for prompt, script in data.items():
        if isinstance(script, str):
            continue
        if not isinstance(script, list) or not all(isinstance(item, str) for item in script):
            raise ConfigError(f"{path}: answers[{prompt!r}] must be a string or a list of strings")
    return data


async def _serve_until_signalled(server: LoopbackServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except NotImplementedError:  # Windows event loops have no signal handlers
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))

    def announce(base_url: str) -> None:
        # The one line a parent process waits for; flushed, since stdout is a pipe there.
        sys.stdout.write(f"LISTENING {base_url}\n")
        sys.stdout.flush()

    await server.serve(until=stop, on_listening=announce)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        config = ServerConfig(
            answers=_load_answers(args.answers) if args.answers else None,
            default_answer=args.default_answer,
            latency=args.latency,
            n_support=args.n_support,
            max_choices=args.max_choices,
            model=args.model,
            host=args.host,
            port=args.port,
        )
    except (ConfigError, OSError, ValueError) as exc:
        _parser().error(str(exc))
    asyncio.run(_serve_until_signalled(LoopbackServer(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
