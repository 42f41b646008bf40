"""The ``ttscale`` command line.

Commands grow with the library: ``plugins`` lists what is registered, ``sample`` draws candidates
from an OpenAI-compatible server and writes them as JSON lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ttscale import __version__
from ttscale.errors import TTScaleError
from ttscale.registry import GROUPS, available
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.sync import SyncSampler
from ttscale.types import SamplingParams

app = typer.Typer(
    name="ttscale",
    help="Turn extra inference compute into better LLM answers.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ttscale {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer reads the annotation at run time on Python 3.10
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def plugins() -> None:
    """List the registered samplers, strategies and verifiers (entry points)."""
    table = Table("kind", "names", "entry-point group")
    for kind, group in GROUPS.items():
        table.add_row(kind, ", ".join(available(kind)) or "(none)", group)
    Console().print(table)


@app.command()
def sample(
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as one user message).")],
    samples: Annotated[int, typer.Option("-n", "--samples", min=1, help="How many.")] = 4,
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL.")] = (
        "http://127.0.0.1:8000/v1"
    ),
    model: Annotated[str, typer.Option(help="Model name on that server.")] = "default",
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key.")
    ] = "OPENAI_API_KEY",
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    seed: Annotated[int, typer.Option(help="Base seed; each sample's seed derives from it.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1)] = 16,
    max_n: Annotated[int, typer.Option(min=1, help="Choices per request at most.")] = 16,
    endpoint: Annotated[str, typer.Option(help="chat or completions")] = "chat",
    out: Annotated[
        Optional[Path],  # noqa: UP045 - see above
        typer.Option(help="Write JSON lines here instead of stdout."),
    ] = None,
) -> None:
    """Draw samples for one prompt and print them as JSON lines, then the usage."""
    try:
        config = OpenAISamplerConfig(
            model=model,
            base_url=base_url,
            api_key=os.environ.get(api_key_env),
            api_key_env=None,
            endpoint=endpoint,  # type: ignore[arg-type]  # validated by the config
            max_n=max_n,
            concurrency=concurrency,
            params=SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed),
        )
        with SyncSampler(OpenAISampler(config)) as sampler:
            batch = sampler.sample(prompt, samples)
    except TTScaleError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    lines = [json.dumps(candidate.to_dict()) for candidate in batch.candidates]
    if out is None:
        for line in lines:
            typer.echo(line)
    else:
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    usage = batch.usage
    console.print(
        f"{usage.samples} samples, {usage.requests} requests, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"{usage.wall_time_s:.2f} s"
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
