"""Starting the loopback server in a process of its own, for benchmarks and tests that must not
share its interpreter: :func:`loopback_process`."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence

__all__ = ["loopback_process"]


@contextlib.contextmanager
def loopback_process(args: Sequence[str] = (), *, stop_timeout_s: float = 30.0) -> Iterator[str]:
    """Run ``python -m ttscale.testing ARGS...`` and yield its base URL
    (``http://127.0.0.1:PORT/v1``) once it listens; stop it (SIGTERM, then wait) on leaving.

    A server that exits or prints anything but its ``LISTENING`` line first is a RuntimeError
    quoting what it printed.
    """
    command = [sys.executable, "-m", "ttscale.testing", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"loopback server did not start ({' '.join(command)}): {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
