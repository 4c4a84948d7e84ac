"""The unlearner registry: built-ins by decorator, SARE and third-party methods by entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from halluc_bench.registry import Registry, RegistryError
from halluc_bench.unlearning import UNLEARNERS, Unlearner, make_unlearner
from halluc_bench.unlearning.methods import GradDiff

GROUP = "halluc_bench.unlearners"
EXAMPLE_PLUGIN = Path(__file__).resolve().parent / "example_plugin"


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_duplicate_name_rejected():
    class Impostor(Unlearner):
        name = "graddiff"

    with pytest.raises(RegistryError, match="'graddiff' is already registered"):
        UNLEARNERS.register("graddiff")(Impostor)
    assert UNLEARNERS.get("graddiff") is GradDiff


def test_unknown_name_lists_valid_and_nearest():
    with pytest.raises(RegistryError) as caught:
        make_unlearner("gradiff")
    message = str(caught.value)
    assert "unknown unlearner 'gradiff'" in message
    assert "Did you mean 'graddiff'?" in message
    for name in ("ga", "npo", "simnpo", "sare"):
        assert name in message


def test_registry_requires_unlearner_subclass():
    registry = Registry("unlearner", None, Unlearner)
    with pytest.raises(TypeError, match="must subclass Unlearner"):
        registry.register("not-a-method")(dict)


def test_sare_declared_as_entry_point():
    declared = {entry.name: entry.value for entry in entry_points(group=GROUP)}
    assert declared.get("sare") == "sare.unlearner:SARE"


def test_sare_found_through_registry():
    from sare.unlearner import SARE

    assert UNLEARNERS.get("sare") is SARE
    assert make_unlearner("sare", rho=0.02).config.rho == 0.02


def test_sare_not_registered_by_import():
    """Importing halluc_bench does not import SARE, and importing SARE does not register it."""
    result = _python(
        """
        import sys
        import halluc_bench.unlearning as unlearning
        print("imported-by-halluc-bench", "sare.unlearner" in sys.modules)
        import halluc_bench.registry
        halluc_bench.registry.entry_points = lambda group: []  # hide every entry point
        import sare.unlearner
        print("registered-by-import", "sare" in unlearning.UNLEARNERS)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "imported-by-halluc-bench False" in result.stdout
    assert "registered-by-import False" in result.stdout


def test_entry_point_constructed_in_process(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    plugin = EntryPoint(name="example_ascent", value="halluc_bench_example_plugin:TemperedAscent", group=GROUP)
    monkeypatch.setattr("halluc_bench.registry.entry_points", lambda group: [plugin] if group == GROUP else [])
    registry = Registry("unlearner", GROUP, Unlearner)
    method = registry.get("example_ascent")
    assert method.__name__ == "TemperedAscent"
    assert method(temperature=3.0).config.temperature == 3.0


def test_broken_plugin_does_not_hide_others(monkeypatch, caplog):
    broken = EntryPoint(name="broken", value="no_such_module_for_tests:Method", group=GROUP)
    sare = EntryPoint(name="sare", value="sare.unlearner:SARE", group=GROUP)
    monkeypatch.setattr("halluc_bench.registry.entry_points", lambda group: [broken, sare])
    registry = Registry("unlearner", GROUP, Unlearner)
    assert registry.names() == ["sare"]
    assert "failed to load unlearner plug-in 'broken'" in caplog.text


@pytest.fixture
def installed_example_plugin():
    """pip-install the example plug-in (editable, offline) into this environment; uninstall afterwards."""
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-e", str(EXAMPLE_PLUGIN)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    if install.returncode != 0:
        pytest.fail(f"pip install of the example plug-in failed:\n{install.stderr[-2000:]}")
    try:
        yield
    finally:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "halluc-bench-example-plugin"],
            capture_output=True, text=True, timeout=300, check=False,
        )


def test_installed_plugin_discovered(installed_example_plugin):
    result = _python(
        """
        from importlib.metadata import entry_points
        from halluc_bench.unlearning import UNLEARNERS, describe_methods, make_unlearner
        print("entry-point", sorted(e.name for e in entry_points(group="halluc_bench.unlearners")))
        method = make_unlearner("example_ascent", temperature=4.0)
        print("class", type(method).__name__, method.config.temperature)
        print("described", "example_ascent" in [row["name"] for row in describe_methods()])
        """
    )
    assert result.returncode == 0, result.stderr
    assert "'example_ascent'" in result.stdout
    assert "class TemperedAscent 4.0" in result.stdout
    assert "described True" in result.stdout
