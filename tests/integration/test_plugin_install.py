"""A real pip install into a fresh virtual environment: entry points, listing, isolation, switches.

The environment holds only this library (built as a wheel, installed without dependencies), two
other plugin distributions made here (one that fails to import, one whose hook raises) and pluggy
(made importable through a .pth file, so no network is needed). Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_dists import GROUP, cli, install_env, make_plugin_dist, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("plugin_env")
    broken = make_plugin_dist(tmp, "broken-plugin", "broken_plugin", """
        raise ImportError("this plugin is broken on purpose")
    """)
    bad_hook = make_plugin_dist(tmp, "bad-hook-plugin", "bad_hook_plugin", """
        @hookimpl
        def register_recipes(register):
            register("half_registered_config", "bad_hook_plugin:nothing", mode="pretrain")
            raise RuntimeError("hook failed after one registration")
    """)
    return install_env(tmp, [broken, bad_hook])


def test_entry_points_show_group_and_entry(plugin_env: dict[str, Path]) -> None:
    code = f"import json, importlib.metadata as m; print(json.dumps(sorted((e.name, e.value, e.dist.name) for e in m.entry_points(group={GROUP!r}))))"
    found = json.loads(run([str(plugin_env["python"]), "-c", code]).stdout)
    assert ["nemotron3_super", "nemotron3_super.plugins.nemotron3_super_plugin", "nemotron3-super"] in found
    assert {name for name, _, _ in found} == {"nemotron3_super", "broken_plugin", "bad_hook_plugin"}


def test_listing_reports_ours_and_the_broken_ones(plugin_env: dict[str, Path]) -> None:
    proc = cli(plugin_env, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    ours = plugins["nemotron3_super"]
    expected_version = run([str(plugin_env["python"]), "-c",
                             "import importlib.metadata as m; print(m.version('nemotron3-super'))"]).stdout.strip()
    assert ours["version"] == expected_version and ours["distribution"] == "nemotron3-super"
    assert ours["errors"] == []
    kinds = {(r["kind"], r["name"]) for r in ours["registrations"]}
    assert ("bridge", "NemotronHForCausalLM") in kinds
    assert ("model_provider", "nemotron3-super-120b-a12b") in kinds
    assert ("recipe", "nemotron3_super_lora_config") in kinds

    broken = plugins["broken_plugin"]
    assert broken["distribution"] == "broken-plugin" and broken["version"] == "9.9.13"
    assert "ImportError: this plugin is broken on purpose" in broken["errors"][0]
    bad_hook = plugins["bad_hook_plugin"]
    assert "register_recipes: RuntimeError: hook failed after one registration" in bad_hook["errors"][0]
    assert bad_hook["registrations"] == []  # nothing half-registered survives

    table = cli(plugin_env, "plugins").stdout
    assert "nemotron3-super" in table and "ERROR ImportError" in table


def test_strict_mode_raises(plugin_env: dict[str, Path]) -> None:
    for proc in (cli(plugin_env, "plugins", "--strict"), cli(plugin_env, "plugins", MEGATRON_BRIDGE_PLUGINS_STRICT="1")):
        assert proc.returncode == 2
        assert "plugin 'bad_hook_plugin' (bad-hook-plugin 9.9.15" in proc.stderr
        assert "plugin 'broken_plugin' (broken-plugin 9.9.13, module broken_plugin) failed: ImportError" in proc.stderr
    code = ("from nemotron3_super.plugins import load_plugins, PluginLoadError\n"
            "try:\n    load_plugins(strict=True)\nexcept PluginLoadError as e:\n    print('raised', e)\n")
    out = run([str(plugin_env["python"]), "-c", code]).stdout
    assert out.startswith("raised plugin 'bad_hook_plugin'") and "9.9.15" in out


@pytest.mark.parametrize(
    ("switch", "loaded", "skipped"),
    [
        ("", set(), {"nemotron3_super", "broken_plugin", "bad_hook_plugin"}),
        ("nemotron3_super", {"nemotron3_super"}, {"broken_plugin", "bad_hook_plugin"}),
        ("-broken_plugin,-bad_hook_plugin", {"nemotron3_super"}, {"broken_plugin", "bad_hook_plugin"}),
        ("-broken_plugin", {"nemotron3_super", "bad_hook_plugin"}, {"broken_plugin"}),
    ],
)
def test_allow_deny_switch(plugin_env: dict[str, Path], switch: str, loaded: set[str], skipped: set[str]) -> None:
    proc = cli(plugin_env, "plugins", "--json", MEGATRON_BRIDGE_PLUGINS=switch)
    data = json.loads(proc.stdout)
    assert {p["name"] for p in data["plugins"]} == loaded
    assert set(data["skipped"]) == skipped
    strict = cli(plugin_env, "plugins", "--strict", MEGATRON_BRIDGE_PLUGINS=switch)
    assert strict.returncode == (2 if "bad_hook_plugin" in loaded else 0), strict.stderr
