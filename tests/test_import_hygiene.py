"""What importing ttscale and running its quick commands load: nothing heavy until it is used.

Each check runs a fresh interpreter, so modules loaded by this test process do not count.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"openai", "numpy", "scipy", "rich"}


def loaded_after(code: str, roots: set[str]) -> list[str]:
    """The modules under ``roots`` loaded once ``code`` has run, printed last on stderr."""
    report = (
        "import sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(roots)!r}), "
        "file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, check=True
    )
    return eval(done.stderr.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_import_ttscale_loads_nothing_heavy() -> None:
    assert loaded_after("import ttscale", HEAVY) == []
    assert loaded_after("from ttscale import OpenAISampler, SamplingParams", HEAVY) == []
    # Control: the check sees heavy modules once something loads them.
    assert "openai" in loaded_after("import ttscale; ttscale.wrap", HEAVY)


def test_a_name_that_is_also_a_submodule_stays_the_public_object() -> None:
    code = "import ttscale.wrap, ttscale; assert callable(ttscale.wrap), ttscale.wrap"
    assert loaded_after(code, {"ttscale"})


def test_ttscale_plugins_loads_neither_pydantic_rich_nor_the_samplers() -> None:
    plugins = (
        "import sys; sys.argv = ['ttscale', 'plugins']\n"
        "from ttscale.cli import app\n"
        "app(standalone_mode=False)"
    )
    loaded = loaded_after(plugins, {"pydantic", "openai", "numpy", "httpx2", "rich"})
    assert loaded == []
    # Control: without the help flag's default (an empty default map), typer loads pydantic.
    control = plugins.replace("standalone_mode=False", "standalone_mode=False, default_map={}")
    assert "pydantic" in loaded_after(control, {"pydantic"})


def test_ttscale_help_loads_neither_rich_nor_pydantic() -> None:
    roots = {"rich", "pydantic", "openai", "numpy", "httpx2"}
    run = (
        "import sys; sys.argv = ['ttscale', {}]\n"
        "from ttscale.cli import app\n"
        "app(standalone_mode=False)"
    )
    assert loaded_after(run.format("'--help'"), roots) == []
    # Control: output through the CLI's console loads rich, and the check sees it.
    assert "rich" in loaded_after("import ttscale.cli as cli; cli._out()", roots)
