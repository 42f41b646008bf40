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
from ttscale.portal import CLEAN_UP_TIMEOUT_S

# The subprocesses below are bounded by their own timeouts (up to 600 s, for a loaded machine);
# pytest's default of 300 s would cut them short first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


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


def llama_servers_of(owner_pid: int) -> list[int]:
    """The llama-server processes whose parent is `owner_pid` (read from /proc, Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        # The command name in field 2 may hold spaces, so split after its closing parenthesis.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == owner_pid and command.endswith(b"llama-server"):
            found.append(int(entry.name))
    return found


def start_solve_and_wait_for_server(
    tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[str], int]:
    solve = subprocess.Popen(
        [
            *(
                sys.executable,
                "-m",
                "ttscale.cli",
                "solve",
                "arithmetic",
                "--limit",
                "12",
                "-n",
                "8",
            ),
            *("--max-tokens", "256", "--out", str(tmp_path / "o.jsonl"), "--no-plot", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a shell's background job (`cmd &`) passes SIGINT on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        servers = llama_servers_of(solve.pid)
        if servers:
            return solve, servers[0]
        assert solve.poll() is None, solve.communicate()[1][-3000:]
        time.sleep(0.1)
    solve.kill()
    raise AssertionError("ttscale solve started no llama-server within 120 s")


def assert_server_stops(solve: subprocess.Popen[str], server_pid: int, stderr: str) -> None:
    assert solve.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    deadline = time.monotonic() + 20
    while pid_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(server_pid), "llama-server outlived a Ctrl-C of ttscale solve"


def test_ctrl_c_stops_the_run_and_its_server(tmp_path: Path) -> None:
    solve, server_pid = start_solve_and_wait_for_server(tmp_path)
    time.sleep(3)  # let it start sampling, so Ctrl-C lands mid-run
    solve.send_signal(signal.SIGINT)
    # One Ctrl-C keeps what the requests in flight return, for up to the portal's own grace period;
    # on a slow machine that wait is long, so the bound here is that period, not a shorter guess.
    _, stderr = solve.communicate(timeout=CLEAN_UP_TIMEOUT_S + 90)
    assert_server_stops(solve, server_pid, stderr)


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    solve, server_pid = start_solve_and_wait_for_server(tmp_path)
    time.sleep(3)
    solve.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert solve.stderr is not None
    for line in solve.stderr:  # the first Ctrl-C's warning says the run is waiting
        if "Ctrl-C again" in line:
            break
    else:
        pytest.fail("the run ended after one Ctrl-C without saying it waits for requests in flight")
    solve.send_signal(signal.SIGINT)
    _, stderr = solve.communicate(timeout=60)
    assert time.monotonic() - started < CLEAN_UP_TIMEOUT_S  # it did not sit out the grace period
    assert_server_stops(solve, server_pid, stderr)


def test_an_error_mid_run_stops_the_server(tmp_path: Path) -> None:
    # The results file becomes a directory once the server is up: writing the first record fails.
    out = tmp_path / "o.jsonl"
    solve, server_pid = start_solve_and_wait_for_server(tmp_path)
    out.unlink(missing_ok=True)
    out.mkdir()
    solve.communicate(timeout=600)
    assert solve.returncode != 0
    deadline = time.monotonic() + 20
    while pid_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(server_pid), "llama-server outlived a failed ttscale solve"
