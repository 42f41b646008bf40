"""The ``ttscale`` command line.

Commands grow with the library: ``plugins`` lists what is registered, ``sample`` draws candidates
from an OpenAI-compatible server and writes them as JSON lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:  # rich loads with the first output: --help (plain text) never needs it
    from rich.console import Console
    from rich.table import Table

from ttscale import __version__
from ttscale.cli_values import PlainValuesGroup
from ttscale.errors import ConfigError, TTScaleError
from ttscale.words import plural

app = typer.Typer(
    name="ttscale",
    help="Turn extra inference compute into better LLM answers.",
    cls=PlainValuesGroup,  # option values read without pydantic where they are plain
    no_args_is_help=True,
    add_completion=False,
    # Help is printed as written: rich markup would eat "[server]" in "(extra [server])".
    rich_markup_mode=None,
)


# Markup off on every console: user text (paths like data[test].jsonl, model names, errors)
# prints as it is; the few styled words are Text spans (see _styled).
@functools.cache
def _console() -> Console:
    """The console for errors and notes (stderr), made on first use."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, markup=False)  # an error line must stay whole


def _out() -> Console:
    """The console for results (stdout), markup off like the error console's."""
    from rich.console import Console

    return Console(markup=False)


def _table(*columns: Any, **options: Any) -> Table:
    from rich.table import Table

    return Table(*columns, **options)


def _styled(label: str, style: str, message: object) -> Any:
    """``label`` in ``style``, then ``message`` as plain text (never read as markup)."""
    from rich.text import Text

    return Text.assemble((label, style), " ", str(message))


def print_table(console: Console, table: Table) -> None:
    """``table`` fitted to the console's width (see :mod:`ttscale.tables`)."""
    from ttscale.tables import print_table as print_fitted

    print_fitted(console, table)


def _fail(message: object) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise (code 2)."""
    _console().print(_styled("error:", "red", message))
    return typer.Exit(code=2)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ttscale {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    # A plain bool: typer coerces any other annotation through pydantic, 0.3 s to import.
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def plugins() -> None:
    """List the registered samplers, strategies and verifiers (entry points)."""
    from ttscale.registry import GROUPS, available_by_kind

    # Plain lines, not a table: this is a quick command, and rich alone would double its start-up.
    found = available_by_kind()
    typer.echo(f"{'kind':<10} {'entry-point group':<22} names")
    for kind, names in found.items():
        typer.echo(f"{kind:<10} {GROUPS[kind]:<22} {', '.join(names) or '(none)'}")


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
    from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
    from ttscale.sync import SyncSampler
    from ttscale.types import SamplingParams

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
        raise _fail(exc) from exc
    lines = [json.dumps(candidate.to_dict()) for candidate in batch.candidates]
    if out is None:
        for line in lines:
            typer.echo(line)
    else:
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    usage = batch.usage
    _console().print(
        f"{plural('sample', usage.samples)}, {plural('request', usage.requests)}, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"{usage.wall_time_s:.2f} s"
    )


def _parse_options(pairs: list[str], flag: str = "--option") -> dict[str, Any]:
    """``KEY=VALUE`` options; values are read as JSON when they parse, else as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@app.command()
def solve(
    dataset: Annotated[str, typer.Argument(help="A JSONL file, or: arithmetic, humaneval, gsm8k.")],
    out: Annotated[Path, typer.Option("--out", help="Results JSONL (resumed if it exists).")],
    strategy: Annotated[
        str, typer.Option(help="A registered strategy, or a graph spec file (.json/.yaml).")
    ] = "majority",
    samples: Annotated[
        int, typer.Option("-n", "--samples", min=1, help="Samples per problem.")
    ] = 8,
    k: Annotated[int, typer.Option("--k", min=1, help="Answers to select (pass@k).")] = 1,
    verifier: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option(
            help="A registered verifier the strategy scores with (judge asks the run's model)."
        ),
    ] = None,
    verifier_option: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--verifier-option",
            "-V",
            help="Verifier setting KEY=VALUE (repeatable), e.g. -V mode=yes_no.",
        ),
    ] = None,
    grader: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="How correctness is judged (default: exact_match or unit_tests)."),
    ] = None,
    base_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="OpenAI-compatible server (several, comma-separated: a pool); "
            "default: the embedded local model."
        ),
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name on that server.")] = None,  # noqa: UP045
    api_key_env: Annotated[str, typer.Option(help="Variable holding the API key.")] = (
        "OPENAI_API_KEY"
    ),
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    max_tokens: Annotated[int, typer.Option(min=1)] = 512,
    seed: Annotated[int, typer.Option(help="Base seed for per-sample seeds.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    limit: Annotated[Optional[int], typer.Option(min=1, help="First L problems.")] = None,  # noqa: UP045
    output_format: Annotated[
        str, typer.Option("--format", help="ttscale, or human-eval to also write completions.")
    ] = "ttscale",
    allow_code_execution: Annotated[
        bool, typer.Option(help="Allow running model-written code for unit tests.")
    ] = False,
    option: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--option", "-o", help="Strategy option KEY=VALUE (repeatable)."),
    ] = None,
    plot: Annotated[bool, typer.Option(help="Fit coverage laws and write a PNG.")] = True,
    logprobs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            min=0,
            max=20,
            help="Token logprobs with this many top alternatives, kept in the sample journal.",
        ),
    ] = None,
    request_timeout: Annotated[
        float,
        typer.Option(min=0.001, help="Seconds a request may take before the client retries it."),
    ] = 600.0,
    cache: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Sample cache directory (SQLite): reruns never pay twice."),
    ] = None,
    budget: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--budget",
            metavar="LIMIT=VALUE,...",
            help="Each problem's limits: samples, requests, tokens, completion_tokens, cost, "
            "seconds (e.g. samples=64,tokens=20000).",
        ),
    ] = None,
    run_budget: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--run-budget",
            metavar="LIMIT=VALUE,...",
            help="The whole run's limits (across reruns; seconds: this invocation). When spent, "
            "the run stops and a rerun with a larger budget goes on.",
        ),
    ] = None,
    price: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--price",
            metavar="IN,OUT",
            help="Dollars per million prompt and completion tokens (makes cost real).",
        ),
    ] = None,
    ray: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Spread the problems over a Ray cluster (extra [ray]): local, auto, "
            "ray://host:port or host:port.",
        ),
    ] = None,
    ray_shards: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Ray tasks to split the problems into (default: cluster CPUs)."),
    ] = None,
) -> None:
    """Run a strategy over a dataset; one JSONL record per problem, resumable."""
    from ttscale.cli_solve import human_eval_problem_file, print_summary, with_progress
    from ttscale.datasets import load_dataset
    from ttscale.local_model import LocalModelServer
    from ttscale.solve import SolveConfig, parse_budget, parse_price
    from ttscale.solve import solve as run_solve

    try:
        if ray_shards is not None and ray is None:
            raise ConfigError("--ray-shards needs --ray ADDRESS")
        config = SolveConfig(
            dataset=dataset,
            out=out,
            strategy=strategy,
            samples=samples,
            k=k,
            verifier=verifier,
            verifier_options=_parse_options(verifier_option or [], "--verifier-option"),
            grader=grader,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            concurrency=concurrency,
            limit=limit,
            output_format=output_format,  # type: ignore[arg-type]  # validated by the config
            allow_code_execution=allow_code_execution,
            strategy_options=_parse_options(option or []),
            cache=cache,
            budget=parse_budget(budget) if budget else {},
            run_budget=parse_budget(run_budget, "--run-budget") if run_budget else {},
            price=parse_price(price) if price else None,
            logprobs=logprobs,
            request_timeout_s=request_timeout,
        )
        problems = load_dataset(dataset, limit=limit)
        total = len(problems)
        with contextlib.ExitStack() as stack:
            server_url, server_model = base_url, model
            if base_url is None:
                _console().print("starting the embedded model (llama.cpp, CPU)...")
                local = stack.enter_context(LocalModelServer())
                server_url, server_model = local.base_url, local.model
                # llama.cpp under-reports tokens for n > 1; logprobs count them exactly.
                if config.logprobs is None:
                    config = dataclasses.replace(config, logprobs=0)
            if ray is not None:
                from ttscale.distributed import solve_on_ray

                run = functools.partial(
                    solve_on_ray, config, address=ray, shards=ray_shards, base_url=server_url
                )
            else:
                run = functools.partial(portal_call, run_solve, config, base_url=server_url)
            summary = with_progress(_console(), total, functools.partial(run, model=server_model))
        if config.output_format == "human-eval":
            scoring = human_eval_problem_file(out, problems)
    except TTScaleError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt as exc:
        note = "what arrived is journalled; the same command goes on from there"
        _console().print(_styled("interrupted:", "yellow", note))
        raise typer.Exit(code=130) from exc
    print_summary(summary, plot, _out(), _console())
    if config.output_format == "human-eval":
        _out().print(scoring, soft_wrap=True)


def portal_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    from ttscale.portal import default_portal

    return default_portal().call(function, *args, **kwargs)


@app.command()
def fit(
    results: Annotated[Path, typer.Argument(help="A results JSONL written by `ttscale solve`.")],
    out_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Where fit.json and coverage.png go (default: beside the results)."),
    ] = None,
    target: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Coverage to reach: prints the k and cost predicted."),
    ] = None,
    strategy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only this strategy's records (a file may hold several)."),
    ] = None,
) -> None:
    """Fit coverage-vs-samples laws to a results file; print the table, write PNG and JSON.

    The table also shows each strategy's accuracy at every k, evaluated offline from the stored
    samples (majority, adaptive, ahead-by-k; best-of-N and the weighted ones when samples carry
    verifier scores; DeepConf offline and online when the run kept token logprobs,
    --logprobs 20), each value with its 90% bootstrap interval over problems, and the law's
    fit error both in-sample and on held-out k.
    """
    from ttscale.compare import journal_traces
    from ttscale.report import fit_report, offline_bands, read_results, render_table, sample_rows

    directory = out_dir or results.parent / (results.stem + "-fit")
    try:
        read_results(results)  # every line checked, with its place named, before anything else
        traces, no_traces = journal_traces(results)
        extra, bands, offline_notes = offline_bands(
            sample_rows(results), strategy=strategy, traces=traces
        )
        offline_notes += [no_traces] if no_traces else []
        report = fit_report(
            results,
            directory,
            strategy=strategy,
            target_coverage=target,
            extra_columns=extra,
            extra_bands=bands,
        )
    except TTScaleError as exc:
        raise _fail(exc) from exc
    print_table(_out(), render_table(report))
    for note in [*report.notes, *offline_notes]:
        _console().print(note)
    _console().print(f"wrote {report.json_path} and {report.plot_path}")


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Results JSONL of side a (`ttscale solve --out`).")],
    b: Annotated[Path, typer.Argument(help="Results JSONL of side b (may be the same file).")],
    strategy: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            help="Offline strategy to compare (majority, adaptive, ..., deepconf and "
            "deepconf_online from runs with --logprobs): once for both sides, or twice, a's then "
            "b's."
        ),
    ] = None,
    k: Annotated[
        Optional[list[int]],  # noqa: UP045
        typer.Option("--k", help="Budgets to compare (repeat; default 12 log-spaced)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the orders, bootstrap and flips.")] = 0,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Also write the comparison as JSON here."),
    ] = None,
) -> None:
    """Paired comparison over the problems both files hold: a - b at each k with a 95% CI and a
    p-value, and at equal mean tokens spent, which side is ahead."""
    from ttscale.compare import compare_runs, render

    try:
        comparison = compare_runs(a, b, strategies=strategy or ["majority"], ks=k, seed=seed)
    except TTScaleError as exc:
        raise _fail(exc) from exc
    out_console = _out()
    out_console.print(
        f"a = {comparison.a}, b = {comparison.b}: {plural('problem', comparison.problems)}"
    )
    rows = render(comparison)
    for view, title in (("k", "at budget k"), ("tokens", "at equal mean tokens per problem")):
        chosen = [row for row in rows if row["view"] == view]
        if not chosen:
            out_console.print(f"{title}: the two curves share no range of tokens")
            continue
        header = [name for name in chosen[0] if name != "view"]
        header[0] = "k" if view == "k" else "tokens"
        table = _table(*header, title=f"a - b {title}")
        for row in chosen:
            table.add_row(*(value for name, value in row.items() if name != "view"))
        print_table(out_console, table)
    out_console.print(f"p-values: {comparison.p_value_method}; CIs: bootstrap over problems")
    for note in comparison.notes:
        _console().print(note)
    if out is not None:
        out.write_text(json.dumps(comparison.to_dict(), indent=2) + "\n", encoding="utf-8")
        _console().print(f"wrote {out}")


@app.command()
def serve(
    base_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Upstream OpenAI-compatible server; default: the embedded local model."),
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Upstream model presets use when they name none."),
    ] = None,
    api_key_env: Annotated[str, typer.Option(help="Variable holding the upstream API key.")] = (
        "OPENAI_API_KEY"
    ),
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told).")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to bind; 0: a free one, printed.")
    ] = 8000,
    port_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Write the bound port here (one line) once the server accepts connections; "
            "removed at exit. For scripts with --port 0."
        ),
    ] = None,
    presets: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--presets", help="TOML or JSON file of presets ([presets.NAME])."),
    ] = None,
    preset: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--preset",
            help="NAME=key=value,... (repeatable), e.g. maj16=strategy=majority,samples=16",
        ),
    ] = None,
    proxy_key_env: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Variable holding the key clients must send (Bearer)."),
    ] = None,
    default_strategy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Scale every request with this strategy (default: pass through); "
            "NAME,key=value,... adds settings as --preset does, e.g. "
            "majority,samples=8,sampling.temperature=0.7 (a pinned temperature)."
        ),
    ] = None,
    max_samples: Annotated[int, typer.Option(min=1, help="Cap on a request's samples.")] = 64,
    max_tokens: Annotated[int, typer.Option(min=1, help="Cap on a sample's max_tokens.")] = 4096,
    max_body_bytes: Annotated[int, typer.Option(min=1)] = 1 << 20,
    max_concurrent_requests: Annotated[
        int, typer.Option(min=1, help="Requests served at once; more get 429.")
    ] = 256,
    concurrency: Annotated[int, typer.Option(min=1, help="Upstream requests in flight.")] = 64,
    allow_code_execution: Annotated[
        bool, typer.Option(help="Let the unit_tests verifier run model-written code.")
    ] = False,
    allow_request_endpoints: Annotated[
        bool,
        typer.Option(
            help="Let requests name servers and keys in their settings (a graph spec's "
            "models.X.base_url); the proxy then sends requests wherever a client points it."
        ),
    ] = False,
) -> None:
    """An OpenAI-compatible proxy that answers with a strategy (extra [server])."""
    try:
        from ttscale.cli_serve import ServeOptions
        from ttscale.cli_serve import serve as serve_proxy
    except ImportError as exc:
        raise _fail(f"ttscale serve needs the [server] extra: {exc}") from exc
    options = ServeOptions(
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        host=host,
        port=port,
        port_file=port_file,
        presets=presets,
        preset=tuple(preset or ()),
        proxy_key_env=proxy_key_env,
        default_strategy=default_strategy,
        max_samples=max_samples,
        max_tokens=max_tokens,
        max_body_bytes=max_body_bytes,
        max_concurrent_requests=max_concurrent_requests,
        concurrency=concurrency,
        allow_code_execution=allow_code_execution,
        allow_request_endpoints=allow_request_endpoints,
    )
    try:  # Notes as plain lines: rich would be a tenth of the proxy's start-up.
        serve_proxy(options, note=functools.partial(typer.echo, err=True))
    except TTScaleError as exc:
        raise _fail(exc) from exc


app.command(name="report")(fit)


@app.command(name="local-setup")
def local_setup() -> None:
    """Assemble the embedded model's weights and build llama-server (once; cached), showing the
    build's progress and each stage's time."""
    from ttscale.local_model import (
        assemble_model,
        build_llama_server,
        build_percent,
        find_llama_server,
    )

    def progress(line: str) -> None:
        if build_percent(line) is not None:
            _console().print(f"llama-server build {line}")

    try:
        started = time.perf_counter()
        model_path = assemble_model()
        typer.echo(f"model: {model_path} ({_duration(time.perf_counter() - started)})")
        started = time.perf_counter()
        server = find_llama_server()
        how = "found"
        if server is None:  # build_llama_server logs each step; cmake's percent lines follow
            server, how = build_llama_server(on_line=progress), "built"
        typer.echo(f"llama-server: {server} ({how} in {_duration(time.perf_counter() - started)})")
    except TTScaleError as exc:
        raise _fail(exc) from exc


def _duration(seconds: float) -> str:
    """``0.4 s``, ``7 min 12 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        # A path the file system refused (a directory where a file goes, a full disk, no
        # permission): the user's to fix, so a message naming it rather than a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        _console().print(_styled("error:", "red", f"{where}{exc.strerror or exc}"))
        sys.exit(2)


if __name__ == "__main__":
    main()
