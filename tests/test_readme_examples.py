"""Every Python example in README.md runs as written, against the loopback server.

The README's code blocks are extracted as they stand; the blocks of one section run together in a
fresh interpreter (later blocks use the earlier ones' names, as in a notebook), with only the
server's address changed: ``http://127.0.0.1:8000/v1`` is a proxy (``ttscale serve`` with the
README's ``maj16`` preset) in front of the loopback server, which answers every prompt alike.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.settings import parse_settings
from ttscale.testing.server import LoopbackServer, count_tokens

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ADDRESS = "http://127.0.0.1:8000/v1"
ANSWER = "17 * 23 = 391, so the answer is \\boxed{391}."


def python_sections() -> dict[str, str]:
    """Each section's Python blocks, joined, by the section's heading."""
    sections: dict[str, list[str]] = {}
    heading = "(top)"
    block: list[str] | None = None
    for line in README.read_text().splitlines():
        if block is not None:
            if line.startswith("```"):
                sections.setdefault(heading, []).append("\n".join(block))
                block = None
            else:
                block.append(line)
        elif line.startswith("```python"):
            block = []
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return {name: "\n\n".join(blocks) for name, blocks in sections.items()}


SECTIONS = python_sections()


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[LoopbackServer, str]]:
    maj16 = parse_settings({"strategy": "majority", "samples": 16}, allow_model=True)
    with (
        LoopbackServer(answers=lambda request: ANSWER) as upstream,
        BackgroundProxy(
            ProxyConfig(base_url=upstream.base_url, model="my-model", presets={"maj16": maj16})
        ) as proxy,
    ):
        yield upstream, proxy.base_url


def run(code: str, base_url: str) -> str:
    assert ADDRESS in code, "the example no longer names the server the test stands in for"
    done = subprocess.run(
        [sys.executable, "-c", code.replace(ADDRESS, base_url)],
        cwd=ROOT,
        env={**os.environ, "OPENAI_API_KEY": "-"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_readme_has_the_examples_this_file_checks() -> None:
    assert len(SECTIONS) >= 3, sorted(SECTIONS)
    assert any("@ttscale.scale" in code for code in SECTIONS.values())


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_readme_example_runs_as_written(address: tuple[LoopbackServer, str], section: str) -> None:
    upstream, base_url = address
    upstream.reset_log()
    out = run(SECTIONS[section], base_url)
    assert upstream.records, "the example sent nothing to the server"
    if "@ttscale.scale" in SECTIONS[section]:
        check_scale_example(out)


def check_scale_example(out: str) -> None:
    """The scale example prints the answer, its real usage, the vote; the wrap examples print
    the client-wide budget's limits and the openai error for a bad request."""
    lines = out.splitlines()
    assert lines[0] == ANSWER
    usage = dict(re.findall(r"(\w+)=(\d+)", lines[1]))
    # Every one of the 8 samples' tokens, as the server counted them (a str reply showed 0).
    assert usage["samples"] == "8" and usage["requests"] == "8"
    assert int(usage["completion_tokens"]) == 8 * count_tokens(ANSWER)
    assert "select" in lines[2] and "391" in lines[2]
    assert "'client': 'max_samples(64) | max_tokens(200000)'" in out
    assert lines[-1] == "400 ttscale.samples"
