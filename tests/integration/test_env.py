"""``nemotron3-super env``: every derived decision equals the library's own choice, and the report never
fails (Transformer Engine absent, mamba-ssm and its kernels hidden, a fake plugin, a broken plugin)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

from nemotron3_super import env

ARCH = "NemotronHForCausalLM"
# Makes packages look uninstalled to a child interpreter (imports and importlib.metadata), as on a
# machine that never had them: the real PathFinder is wrapped, nothing is mocked inside the library.
HIDE = """
import importlib.machinery, sys
HIDDEN_MODULES = {modules!r}
HIDDEN_DISTS = {dists!r}
class _Hidden:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN_MODULES:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()
    @staticmethod
    def find_distributions(*args, **kwargs):
        return (d for d in importlib.machinery.PathFinder.find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower().replace("_", "-") not in HIDDEN_DISTS)
sys.meta_path[:] = [_Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def _rows(rows: list[env.Row]) -> dict[str, env.Row]:
    return {row.name: row for row in rows}


@pytest.fixture(scope="module")
def collected() -> tuple[list[env.Row], float]:
    return env.collect()


@pytest.fixture(scope="module")
def report(collected: tuple[list[env.Row], float]) -> dict[str, env.Row]:
    return _rows(collected[0])


def test_text_has_every_section_and_json_every_row(collected: tuple[list[env.Row], float]) -> None:
    rows, seconds = collected
    text = env.render(rows, seconds)
    for section in ("system", "packages", "gpus", "decisions", "plugins"):
        assert f"## {section}" in text
    assert all(row.name in text for row in rows)
    as_json = env.as_json(rows, seconds)
    assert sum(len(v) for v in as_json["sections"].values()) == len(rows)
    assert not [row for row in rows if row.value == "unavailable"], "a probe failed in the CI environment"


def test_layer_spec_is_the_library_choice(report: dict[str, env.Row]) -> None:
    from nemotron3_super.host_compat import have_transformer_engine
    from nemotron3_super.layer_specs import resolve_spec_kind

    row = report['layer spec (spec_impl="auto")']
    assert row.value == resolve_spec_kind("auto")
    if not have_transformer_engine():  # CI: TE absent
        assert row.value == "local" and "not installed" in row.detail


@pytest.mark.parametrize(("precision", "label"), [("nvfp4", "precision NVFP4"),
                                                ("fp8", "precision FP8 (current scaling)")])
def test_precision_rows_match_what_the_provider_does(report: dict[str, env.Row], precision: str,
                                                     label: str) -> None:
    """The row says what a provider asked for the plan really ends up in, and why."""
    from nemotron3_super.provider import tiny_super_provider

    provider = tiny_super_provider(precision=precision)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provider.finalize()
    row = report[label]
    if provider.precision == precision:
        assert row.value == "runs"
    else:
        assert row.value == f"falls back to {provider.precision}"
        fallback = [str(w.message) for w in caught if type(w.message).__name__ == "PrecisionFallbackWarning"]
        assert fallback and row.detail in fallback[0]


def test_provider_defaults_rows(report: dict[str, env.Row]) -> None:
    from nemotron3_super.provider import tiny_super_provider

    provider = tiny_super_provider()
    provider.finalize()
    assert report["attention backend"].value == provider.attention_backend.name
    assert report["gradient_accumulation_fusion"].value == str(provider.gradient_accumulation_fusion)


def test_mamba_path_follows_the_installed_kernels(report: dict[str, env.Row]) -> None:
    """Independent of the code under test: causal-conv1d's extension file decides the mem-eff path."""
    import importlib.machinery
    import importlib.util

    assert "Mamba layers" not in report  # mamba-ssm is installed (pure Python): layers build
    has_conv_kernels = importlib.machinery.PathFinder.find_spec("causal_conv1d_cuda") is not None
    row = report["Mamba path"]
    assert (row.value == "mem-eff path unavailable") == (not has_conv_kernels)
    if not has_conv_kernels:
        assert "use_mamba_mem_eff_path=False" in row.detail and "nn.Conv1d" in row.detail
        assert report["causal-conv1d CUDA kernels"].value == "not built"
    assert importlib.util.find_spec("mamba_ssm") is not None


def test_bridge_row_is_what_the_host_dispatch_returns(report: dict[str, env.Row]) -> None:
    from nemotron3_super.plugins.host import host_bridge_for

    served = host_bridge_for(ARCH)
    assert report[f"bridge for {ARCH}"].value == f"{served.__module__}.{served.__qualname__}"
    assert report["bridge policy"].value == "plugin"
    assert "NemotronHBridge" in report[f"bridge for {ARCH}"].detail  # the host's own, replaced


def test_env_text_and_json_never_fail(tmp_path: Path) -> None:
    """A fresh interpreter as a user runs it: TE, mamba-ssm and causal-conv1d hidden, policy 'host', one
    plugin that registers a bridge for a new architecture and one that fails to import."""
    site = tmp_path / "site"
    (site / "fake_env_plugin").mkdir(parents=True)
    (site / "fake_env_plugin" / "__init__.py").write_text(textwrap.dedent("""
        from nemotron3_super.plugins import hookimpl

        @hookimpl
        def register_bridges(register):
            register("FakeEnvForCausalLM", "fake_env_plugin:FakeBridge",
                     megatron_model="megatron.core.models.hybrid.hybrid_model:HybridModel")
        """))
    (site / "broken_env_plugin.py").write_text("raise ImportError('broken on purpose')\n")
    for dist, module in (("fake-env-plugin", "fake_env_plugin"), ("broken-env-plugin", "broken_env_plugin")):
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[megatron_bridge.plugins]\n{module} = {module}\n")
    hidden_modules = {"transformer_engine", "mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda"}
    (site / "sitecustomize.py").write_text(HIDE.format(
        modules=hidden_modules, dists={"transformer-engine", "mamba-ssm", "causal-conv1d"}))
    child_env = {**__import__("os").environ, "PYTHONPATH": str(site),
                 "MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY": "host"}
    child_env.pop("MEGATRON_BRIDGE_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "nemotron3_super.cli", "env", "--json"], capture_output=True,
                          text=True, env=child_env, cwd=tempfile.gettempdir(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = json.loads(proc.stdout)["sections"]
    rows = {r["name"]: r for rows in sections.values() for r in rows}
    for package in ("transformer-engine", "mamba-ssm", "causal-conv1d"):
        assert rows[package]["value"] == "not installed", rows[package]
    assert rows["causal-conv1d CUDA kernels"]["value"] == "not built"
    assert rows["Mamba layers"]["value"] == "cannot be built"
    assert rows['layer spec (spec_impl="auto")']["value"] == "local"
    assert rows["bridge policy"] == {"name": "bridge policy", "value": "host",
                                     "detail": "from MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY"}
    assert rows[f"bridge for {ARCH}"]["value"].endswith("NemotronHBridge")  # the host's, kept
    assert rows["bridge for FakeEnvForCausalLM"]["value"] == "fake_env_plugin.FakeBridge"
    assert rows["fake_env_plugin"]["value"] == "loaded"
    assert rows["broken_env_plugin"]["value"] == "failed to load"
    assert "broken on purpose" in rows["broken_env_plugin"]["detail"]
