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
    # Control: on typer's own group (values read by its pydantic adapters), pydantic loads.
    control = plugins.replace(
        "app(", "import typer.core; app.info.cls = typer.core.TyperGroup\napp("
    )
    assert "pydantic" in loaded_after(control, {"pydantic"})


SERVE = (
    "import sys; sys.argv = ['ttscale', 'serve', '--base-url', 'http://127.0.0.1:9/v1', "
    "'--port', {port!r}, '--port-file', 'port', '--preset', 'm4=strategy=majority,samples=4', "
    "'--max-samples', '8', '--proxy-key-env', 'TTSCALE_TEST_UNSET_KEY']\n"
    "from ttscale.cli import app\n"
    "try:\n    app(standalone_mode=False)\nexcept BaseException:\n    pass"
)


def test_ttscale_serve_reads_its_options_without_pydantic() -> None:
    # The run stops at the unset proxy key, after the proxy's modules and every option's value.
    assert loaded_after(SERVE.format(port="0"), {"pydantic", "openai", "numpy"}) == []
    # Control: a value out of range goes to typer's own check, which loads pydantic to refuse it.
    assert "pydantic" in loaded_after(SERVE.format(port="70000"), {"pydantic"})


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
