"""Plugin manager behaviour that needs no extra distributions: laziness, switches, registration checks."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from nemotron3_super.plugins import manager


def test_listing_imports_neither_torch_nor_megatron() -> None:
    """The CLI listing path, in a fresh interpreter of the environment that has torch and megatron installed."""
    code = (
        "import importlib.util, io, json, sys, contextlib\n"
        "assert importlib.util.find_spec('torch') is not None\n"
        "from nemotron3_super.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['plugins', '--json']) == 0\n"
        "plugins = json.loads(out.getvalue())['plugins']\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'transformers'))\n"
        "print(json.dumps({'plugins': [p['name'] for p in plugins], 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "nemotron3_super" in result["plugins"]
    assert result["heavy"] == []


@pytest.mark.parametrize(
    ("value", "allowed", "denied"),
    [
        (None, None, set()),
        ("", set(), set()),
        (" , ", set(), set()),
        ("a,b", {"a", "b"}, set()),
        ("-a", None, {"a"}),
        ("a,-b", {"a"}, {"b"}),
    ],
)
def test_parse_selection(value: str | None, allowed: set[str] | None, denied: set[str]) -> None:
    assert manager.parse_selection(value) == (allowed, denied)


def test_load_is_cached_and_refreshable() -> None:
    first = manager.load_plugins()
    assert manager.load_plugins() is first
    assert manager.load_plugins(refresh=True) is not first


@pytest.mark.parametrize(
    ("kind", "args", "meta", "message"),
    [
        ("recipe", ("x", "no colon"), {"mode": "pretrain"}, "target must be an import path"),
        ("recipe", ("x", "pkg.mod:fn"), {"mode": "train"}, "mode must be 'pretrain', 'sft' or 'peft'"),
        ("bridge", ("Arch", "pkg.mod:Bridge"), {}, "megatron_model='package.module:Class' is required"),
        ("model_provider", ("", "pkg:P"), {}, "name must be a non-empty string"),
    ],
)
def test_register_rejects_bad_registrations(kind: str, args: tuple, meta: dict, message: str) -> None:
    register = manager._make_register(kind, "p", [])
    with pytest.raises(ValueError, match=message):
        register(*args, **meta)


def test_import_target_names_context() -> None:
    with pytest.raises(manager.PluginLoadError, match=r"plugin 'p': recipe 'r': cannot import 'json:nope'"):
        manager.Registration("recipe", "r", "json:nope", "p").load()
    assert manager.Registration("recipe", "r", "json:dumps", "p").load() is json.dumps


def test_plugin_set_serial_is_never_reused() -> None:
    """Case 14: the host adapter's cache key outlives the set; ids would be reused after collection."""
    import gc

    serials = set()
    for _ in range(50):
        serials.add(manager.PluginSet(plugins=[], skipped=[]).serial)
        gc.collect()
    assert len(serials) == 50


def test_plugin_calling_sys_exit_at_import_is_contained(tmp_path) -> None:  # noqa: ANN001
    """Case 13: a plugin whose import calls sys.exit() is reported; discovery of the others goes on."""
    (tmp_path / "exit_plugin.py").write_text("import sys\nsys.exit(3)\n")
    info = tmp_path / "exit_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: exit-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[megatron_bridge.plugins]\naa_exit = exit_plugin\n")
    code = ("import json\nfrom nemotron3_super.plugins.manager import load_plugins\n"
            "s = load_plugins()\nprint(json.dumps({p.name: p.errors for p in s.plugins}))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MEGATRON_BRIDGE_PLUGINS")}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "SystemExit: 3" in errors["aa_exit"][0]
    assert errors["nemotron3_super"] == []
