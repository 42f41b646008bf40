"""``ttscale plugins``: every kind's registered names, read once from the installed entry points."""

from __future__ import annotations

import os
import subprocess
import sys

from ttscale.registry import GROUPS, available, available_by_kind


def test_one_read_gives_what_reading_each_kind_gives() -> None:
    assert available_by_kind() == {kind: available(kind) for kind in GROUPS}
    assert "majority" in available_by_kind()["strategy"]


def test_ttscale_plugins_lists_the_builtins() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ttscale.cli", "plugins"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    for kind, group in GROUPS.items():
        assert kind in shown and group in shown
    assert "openai" in shown and "majority" in shown and "unit_tests" in shown
