"""Each host fix on its own (on stand-in modules, so no host import is needed), and the hook machinery
they all use. The same fixes on the real host modules: tests/integration/test_host_fixes.py."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nemotron3_super.host_compat import dataset_helpers, hooks, lora_te_flags, mamba_stub, te_import


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path for throw-away modules (removed from sys.modules afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        sys.modules.pop(name, None)


def test_after_import_runs_the_fix_once_the_module_has_run(module_dir: Path) -> None:
    (module_dir / "n3s_hooked_a.py").write_text("VALUE = 1\n")
    seen = []
    hooks.after_import("n3s_hooked_a", lambda m: seen.append(m.VALUE))
    assert seen == [] and "n3s_hooked_a" not in sys.modules  # registering imports nothing
    module = importlib.import_module("n3s_hooked_a")
    assert seen == [1] and module.__file__ == str(module_dir / "n3s_hooked_a.py")


def test_after_import_on_an_imported_module_runs_at_once_and_only_once(module_dir: Path) -> None:
    (module_dir / "n3s_hooked_b.py").write_text("VALUE = 2\n")
    importlib.import_module("n3s_hooked_b")
    seen = []

    def fix(m: types.ModuleType) -> None:
        seen.append(m.VALUE)

    hooks.after_import("n3s_hooked_b", fix)
    hooks.after_import("n3s_hooked_b", fix)
    assert seen == [2]


def test_replace_source_changes_the_module_before_it_runs(module_dir: Path) -> None:
    (module_dir / "n3s_hooked_c.py").write_text("import n3s_does_not_exist as dep\nVALUE = 3\n")
    hooks.replace_source("n3s_hooked_c", lambda src: src.replace("import n3s_does_not_exist as dep", "dep = None"))
    assert importlib.import_module("n3s_hooked_c").VALUE == 3


def test_te_import_is_bound_to_an_inert_namespace_only_without_te(monkeypatch: pytest.MonkeyPatch) -> None:
    source = f"x = 1\n{te_import.TE_IMPORT}\nok = isinstance(x, te.Linear)\n"
    monkeypatch.setattr(te_import, "have_transformer_engine", lambda: True)
    assert te_import._without_te_import(source) == source
    monkeypatch.setattr(te_import, "have_transformer_engine", lambda: False)
    namespace: dict = {}
    exec(te_import._without_te_import(source), namespace)  # noqa: S102
    assert namespace["ok"] is False and "transformer_engine" not in sys.modules


def test_lora_flags_are_set_false_without_te(monkeypatch: pytest.MonkeyPatch) -> None:
    name, flags = next(iter(lora_te_flags.TE_FLAGS.items()))
    fake = types.ModuleType(name)
    for flag in flags:
        setattr(fake, flag, True)
    monkeypatch.setattr(lora_te_flags, "have_transformer_engine", lambda: True)
    assert lora_te_flags.correct_flags(fake) == [] and all(getattr(fake, f) for f in flags)
    monkeypatch.setattr(lora_te_flags, "have_transformer_engine", lambda: False)
    assert lora_te_flags.correct_flags(fake) == [f"{name}.{f}" for f in flags]
    assert not any(getattr(fake, f) for f in flags)


def test_dataset_helpers_build_only_when_the_prebuilt_ones_do_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType(dataset_helpers.HOST_MODULE)
    fake.compile_helpers = lambda: calls.append("make")
    dataset_helpers.use_prebuilt_helpers(fake)
    wrapped = fake.compile_helpers
    dataset_helpers.use_prebuilt_helpers(fake)
    assert fake.compile_helpers is wrapped  # wrapped once
    monkeypatch.setitem(sys.modules, "megatron.core.datasets.helpers_cpp", None)  # "does not import"
    fake.compile_helpers()
    assert calls == ["make"]
    monkeypatch.setitem(sys.modules, "megatron.core.datasets.helpers_cpp", types.ModuleType("helpers_cpp"))
    fake.compile_helpers()
    assert calls == ["make"]


def test_mamba_stand_in_only_when_mamba_ssm_is_there_and_the_extension_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    finder = mamba_stub._FallbackFinder()
    assert finder.find_spec("something_else", None) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no mamba_ssm
    assert finder.find_spec(mamba_stub.STUBBED, None) is None
    monkeypatch.undo()
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba-ssm is not installed here")
    spec = finder.find_spec(mamba_stub.STUBBED, None)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(RuntimeError, match=r"selective_scan_cuda\.fwd: the Mamba-1 CUDA extension is not built"):
        module.fwd  # noqa: B018
    # torch.compile probes every loaded module with hasattr(): the stand-in must answer False, not raise
    assert not hasattr(module, "torch") and not hasattr(module, "fwd")


def test_importing_the_package_applies_the_fixes_and_imports_no_host() -> None:
    code = ("import sys, nemotron3_super\n"
            "from nemotron3_super.host_compat import hooks, mamba_stub\n"
            "heavy = sorted(m for m in ('torch', 'megatron', 'transformer_engine') if m in sys.modules)\n"
            "print(heavy, sorted(hooks._AFTER), sorted(hooks._SOURCE),"
            " sum(isinstance(f, mamba_stub._FallbackFinder) for f in sys.meta_path))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split("\n")[0] == (
        "[] ['megatron.bridge.models.model_provider', 'megatron.bridge.peft.module_matcher', "
        "'megatron.bridge.peft.utils', 'megatron.bridge.training.checkpointing', "
        "'megatron.bridge.training.initialize', 'megatron.bridge.training.model_load_save', "
        "'megatron.core.dist_checkpointing.strategies.torch', "
        "'megatron.core.optimizer.distrib_optimizer', 'megatron.core.tensor_parallel.random'] "
        "['megatron.bridge.peft.lora_layers'] 1")  # cuda_on_cpu hooks five host modules
