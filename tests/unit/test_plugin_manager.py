"""Plugin manager behaviour that needs no extra distributions: laziness, switches, registration checks."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from nemotron3_super.plugins import manager, selection


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


@pytest.mark.parametrize(
    ("item", "name", "distribution", "expected"),
    [
        ("a", "a", "dist-a", True),
        ("a", "A", "dist-a", False),  # entry-point names are case-sensitive
        ("a@Dist_A", "a", "dist-a", True),  # distributions compare in PEP 503 form
        ("a@other", "a", "dist-a", False),
        ("a@dist-a", "b", "dist-a", False),
    ],
)
def test_selection_item_matches(item: str, name: str, distribution: str, expected: bool) -> None:
    assert selection.matches(item, name, distribution) is expected


INSTALLED = [("aa_x", "aa-x"), ("nemotron3_super", "nemotron3-super"), ("nemotron3_super", "foreign")]


@pytest.mark.parametrize(
    ("value", "unmatched", "hint"),
    [
        (None, [], None),
        ("", [], None),  # the off switch names nothing
        ("aa_x,-nemotron3_super@foreign", [], None),
        ("nonexistent", ["nonexistent"], "'nonexistent'; installed"),
        ("NEMOTRON3_SUPER", ["NEMOTRON3_SUPER"], "'NEMOTRON3_SUPER' (did you mean 'nemotron3_super'?)"),
        ("nemotron3_super; AA_X", ["nemotron3_super; AA_X"], "(did you mean 'nemotron3_super,aa_x'?)"),
        ("-nemotron_super", ["-nemotron_super"], "'-nemotron_super' (did you mean '-nemotron3_super'?)"),
        ("-", ["-"], "'-'; installed"),
        ("aa_x;-nemotron_super@foreign", ["aa_x;-nemotron_super@foreign"],
         "(did you mean 'aa_x,-nemotron3_super@foreign'?)"),
        ("aa_x@nope", ["aa_x@nope"], "(no distribution 'nope' declares 'aa_x')"),
    ],
)
def test_unmatched_selection_is_described(value: str | None, unmatched: list[str], hint: str | None) -> None:
    assert selection.unmatched(value, INSTALLED) == unmatched
    if hint is not None:
        line = selection.describe_unmatched(value or "", unmatched, INSTALLED)
        assert hint in line and "\n" not in line
        assert line.endswith("installed plugins (distributions): aa_x (aa-x), nemotron3_super (foreign, "
                             "nemotron3-super); separate names with ','")


def test_register_refuses_a_name_twice_in_one_plugin() -> None:
    sink: list = []
    register = manager._make_register("recipe", "p", sink)
    register("r", "pkg.mod:fn", mode="sft")
    with pytest.raises(ValueError, match=r"recipe 'r' is registered twice by this plugin"):
        register("r", "pkg.mod:other", mode="sft")


def _clashing_set() -> manager.PluginSet:
    claims = (manager.Claim("a", "dist-a", "1.0", "a:r"), manager.Claim("b", "dist-b", "2.0", "b:r"))
    other = manager.Registration("recipe", "kept", "b:kept", "b", {"mode": "sft"})
    plugin_b = manager.PluginInfo("b", "dist-b", "2.0", "b", registrations=[other])
    return manager.PluginSet(plugins=[plugin_b], skipped=[], clashes=[manager.Clash("recipe", "r", claims)])


def test_clash_message_names_both_plugins_and_distributions() -> None:
    plugin_set = _clashing_set()
    assert plugin_set.problems() == [
        "plugin clash: recipe 'r' is registered by plugin 'a' (dist-a 1.0: a:r) and by plugin 'b' (dist-b 2.0: b:r); "
        "the name is refused to both (to keep one, deny the others: MEGATRON_BRIDGE_PLUGINS=-a or -b)"]
    with pytest.raises(KeyError, match=r"no recipe named 'r' .*\(registered: kept\); plugin clash: recipe 'r'"):
        plugin_set.get("recipe", "r")
    assert plugin_set.get("recipe", "kept").target == "b:kept"


def test_env_report_rows_for_clashes_and_selection() -> None:
    from nemotron3_super import env

    plugin_set = _clashing_set()
    plugin_set.unmatched, plugin_set.selection_error = ["x"], "MEGATRON_BRIDGE_PLUGINS='x' names no installed plugin"
    rows = {(r.name, r.value): r.detail for r in env._plugins(plugin_set)}
    assert rows[("recipe r", "clash: refused")].startswith("plugin clash: recipe 'r' is registered by plugin 'a'")
    assert rows[("MEGATRON_BRIDGE_PLUGINS", "matches no plugin: x")] == plugin_set.selection_error
