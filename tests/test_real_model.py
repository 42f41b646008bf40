"""The embedded model for real: llama.cpp's llama-server with Qwen2.5-Coder-0.5B-Instruct on CPU.

`scripts/test.sh` assembles the weights and builds llama-server before the suite runs, so these
tests fail (not skip) when either is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ttscale.local_model import MODEL_SIZE, LocalModelServer, assemble_model

pytestmark = pytest.mark.slow


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_assembled_weights_are_the_recorded_gguf() -> None:
    path = assemble_model()
    assert path.stat().st_size == MODEL_SIZE
    assert path.read_bytes()[:4] == b"GGUF"


def test_solve_three_arithmetic_problems_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "arith.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttscale.cli",
            "solve",
            "arithmetic",
            "--limit",
            "3",
            "-n",
            "4",
            "--max-tokens",
            "200",
            "--out",
            str(out),
            "--no-plot",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in sorted(records, key=lambda r: r["id"])] == [
        "arith-00",
        "arith-01",
        "arith-02",
    ]
    for record in records:
        assert record["n"] == 4
        assert record["usage"]["completion_tokens"] == sum(
            s["completion_tokens"] for s in record["samples"]
        )
        assert all(s["tokens_exact"] for s in record["samples"])
        assert all(s["text"].strip() for s in record["samples"])
    # A 0.5B coder model gets most of these one-step problems right with 4 samples.
    assert sum(r["num_correct"] > 0 for r in records) >= 2
    assert "coverage pass@k" in done.stdout


def test_server_stops_with_its_owner_even_on_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from ttscale.local_model import LocalModelServer
        server = LocalModelServer().start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    assert pid_alive(server_pid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 20
    while pid_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(server_pid), "llama-server outlived its owner"


def test_context_manager_stops_the_server() -> None:
    with LocalModelServer() as server:
        pid = server.pid
        assert pid is not None
        assert pid_alive(pid)
    assert not pid_alive(pid)
