"""Plugins that clash, fail half-way or share our entry-point name, and selection typos (issue #12, 11-12).

One real pip-installed environment (see ``plugin_dists.py``) holds this library and three plugin
distributions made here; ``MEGATRON_BRIDGE_PLUGINS`` picks the ones each case needs:
- ``aa-x`` (entry point ``aa_x``): registers our recipe name ``nemotron3_super_pretrain_config``, and a
  provider and a recipe of its own;
- ``half-bridge`` (``half_bridge``): registers a bridge for ``NemotronHForCausalLM``, then its recipe hook raises;
- ``foreign-nemotron``: declares an entry point also named ``nemotron3_super``; registers a provider of its
  own and our provider name ``nemotron3-super-tiny``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_dists import cli, install_env, make_plugin_dist

pytestmark = pytest.mark.slow

OURS = "nemotron3_super@nemotron3-super"  # our label: another distribution declares the name too
FOREIGN = "nemotron3_super@foreign-nemotron"
OUR_RECIPES = {"nemotron3_super_pretrain_config", "nemotron3_super_pretrain_nvfp4_config",
               "nemotron3_super_sft_config", "nemotron3_super_lora_config"}
OUR_PROVIDERS = {"nemotron3-super-120b-a12b", "nemotron3-nano-30b-a3b", "nemotron3-super-tiny"}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("clash_env")
    aa_x = make_plugin_dist(tmp, "aa-x", "aa_x", """
        @hookimpl
        def register_model_providers(register):
            register("aa-x-provider", "aa_x:Provider")

        @hookimpl
        def register_recipes(register):
            register("nemotron3_super_pretrain_config", "aa_x:pretrain", mode="pretrain")
            register("aa_x_sft_config", "aa_x:sft", mode="sft")
    """)
    half = make_plugin_dist(tmp, "half-bridge", "half_bridge", """
        @hookimpl
        def register_bridges(register):
            register("NemotronHForCausalLM", "half_bridge:Bridge", megatron_model="half_bridge:Model")

        @hookimpl
        def register_recipes(register):
            register("half_bridge_config", "half_bridge:recipe", mode="pretrain")
            raise RuntimeError("recipes hook failed after the bridge was registered")
    """)
    foreign = make_plugin_dist(tmp, "foreign-nemotron", "foreign_nemotron", """
        @hookimpl
        def register_model_providers(register):
            register("foreign-provider", "foreign_nemotron:Provider")
            register("nemotron3-super-tiny", "foreign_nemotron:Tiny")
    """, entry_point="nemotron3_super")
    return install_env(tmp, [aa_x, half, foreign])


def _listing(plugin_env: dict[str, Path], selection: str | None) -> tuple[dict, dict[str, dict], str]:
    """(``plugins --json`` output, plugins by label, stderr) under ``MEGATRON_BRIDGE_PLUGINS=selection``."""
    env = {} if selection is None else {"MEGATRON_BRIDGE_PLUGINS": selection}
    proc = cli(plugin_env, "plugins", "--json", **env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_label = {f"{p['name']}@{p['distribution']}": p for p in data["plugins"]}
    return data, by_label, proc.stderr


def _names(plugin: dict, kind: str) -> set[str]:
    return {r["name"] for r in plugin["registrations"] if r["kind"] == kind}


def test_clash_takes_away_only_the_clashing_name(plugin_env: dict[str, Path]) -> None:
    data, plugins, stderr = _listing(plugin_env, f"aa_x,{OURS}")
    ours, aa_x = plugins["nemotron3_super@nemotron3-super"], plugins["aa_x@aa-x"]
    assert ours["errors"] == [] and aa_x["errors"] == []
    assert _names(ours, "model_provider") == OUR_PROVIDERS
    assert _names(ours, "bridge") == {"NemotronHForCausalLM"}
    assert _names(ours, "recipe") == OUR_RECIPES - {"nemotron3_super_pretrain_config"}
    assert _names(aa_x, "recipe") == {"aa_x_sft_config"} and _names(aa_x, "model_provider") == {"aa-x-provider"}
    assert data["clashes"] == [{"kind": "recipe", "name": "nemotron3_super_pretrain_config", "plugins": [
        {"plugin": "aa_x", "distribution": "aa-x", "version": "9.9.4", "target": "aa_x:pretrain"},
        {"plugin": OURS, "distribution": "nemotron3-super", "version": ours["version"],
         "target": "nemotron3_super.recipes.factories:nemotron3_super_pretrain_config"}]}]
    # reported in one line naming both plugins and distributions, not silently resolved
    lines = [line for line in stderr.splitlines() if "plugin clash" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("plugin clash: recipe 'nemotron3_super_pretrain_config' is registered by plugin "
                               "'aa_x' (aa-x 9.9.4: aa_x:pretrain) and by plugin 'nemotron3_super@nemotron3-super' "
                               f"(nemotron3-super {ours['version']}: "), lines[0]
    assert "refused to both" in lines[0]
    table = cli(plugin_env, "plugins", MEGATRON_BRIDGE_PLUGINS=f"aa_x,{OURS}").stdout
    assert "plugin clash: recipe 'nemotron3_super_pretrain_config'" in table
    recipes = json.loads(cli(plugin_env, "recipes", "--json", MEGATRON_BRIDGE_PLUGINS=f"aa_x,{OURS}").stdout)
    assert {r["name"] for r in recipes} == OUR_RECIPES - {"nemotron3_super_pretrain_config"} | {"aa_x_sft_config"}


@pytest.mark.parametrize("strict", [("plugins", "--strict"), ("plugins",)])
def test_clash_is_an_error_under_strict(plugin_env: dict[str, Path], strict: tuple[str, ...]) -> None:
    env = {"MEGATRON_BRIDGE_PLUGINS": f"aa_x,{OURS}"}
    if "--strict" not in strict:
        env["MEGATRON_BRIDGE_PLUGINS_STRICT"] = "1"
    proc = cli(plugin_env, *strict, **env)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("nemotron3-super plugins: error: plugin clash: recipe 'nemotron3_super_pretrain_config'")
    assert "plugin 'aa_x' (aa-x 9.9.4" in error and f"plugin '{OURS}' (nemotron3-super " in error


def test_failing_plugin_keeps_nothing_and_takes_nothing(plugin_env: dict[str, Path]) -> None:
    """half_bridge registered a NemotronH bridge before its recipe hook raised: the bridge is rolled back, so
    it neither survives nor clashes with ours."""
    data, plugins, stderr = _listing(plugin_env, f"half_bridge,{OURS}")
    half, ours = plugins["half_bridge@half-bridge"], plugins["nemotron3_super@nemotron3-super"]
    assert half["registrations"] == [] and half["hooks"] == ["register_bridges", "register_recipes"]
    assert half["errors"][0].startswith("register_recipes: RuntimeError: recipes hook failed after the bridge")
    assert _names(ours, "bridge") == {"NemotronHForCausalLM"} and _names(ours, "recipe") == OUR_RECIPES
    assert data["clashes"] == []
    assert "plugin 'half_bridge' (half-bridge 9.9.11, module half_bridge) failed: register_recipes" in stderr


def test_foreign_distribution_with_our_name_loads_beside_ours(plugin_env: dict[str, Path]) -> None:
    data, plugins, stderr = _listing(plugin_env, "nemotron3_super")
    assert [(p["name"], p["distribution"]) for p in data["plugins"]] == [
        ("nemotron3_super", "foreign-nemotron"), ("nemotron3_super", "nemotron3-super")]
    ours, foreign = plugins["nemotron3_super@nemotron3-super"], plugins["nemotron3_super@foreign-nemotron"]
    assert ours["module"] == "nemotron3_super.plugins.nemotron3_super_plugin" and ours["errors"] == []
    assert _names(ours, "model_provider") == OUR_PROVIDERS - {"nemotron3-super-tiny"}
    assert _names(ours, "bridge") == {"NemotronHForCausalLM"} and _names(ours, "recipe") == OUR_RECIPES
    assert _names(foreign, "model_provider") == {"foreign-provider"}
    assert [(c["name"], [p["plugin"] for p in c["plugins"]]) for c in data["clashes"]] == [
        ("nemotron3-super-tiny", [FOREIGN, OURS])]
    assert f"plugin '{FOREIGN}' (foreign-nemotron 9.9.16: foreign_nemotron:Tiny)" in stderr
    # one of the two is denied by naming its distribution; ours then keeps every name
    data, plugins, stderr = _listing(plugin_env, f"-{FOREIGN}")
    assert data["skipped"] == [FOREIGN]
    assert [c["name"] for c in data["clashes"]] == ["nemotron3_super_pretrain_config"]  # aa_x's, still there
    assert _names(plugins["nemotron3_super@nemotron3-super"], "model_provider") == OUR_PROVIDERS
    assert "names no installed plugin" not in stderr


def test_everything_installed(plugin_env: dict[str, Path]) -> None:
    """No selection: both clashes reported, the failing plugin contained, the rest of ours intact."""
    data, plugins, _ = _listing(plugin_env, None)
    assert sorted((c["kind"], c["name"]) for c in data["clashes"]) == [
        ("model_provider", "nemotron3-super-tiny"), ("recipe", "nemotron3_super_pretrain_config")]
    ours = plugins["nemotron3_super@nemotron3-super"]
    assert _names(ours, "bridge") == {"NemotronHForCausalLM"}
    assert len(ours["registrations"]) == len(OUR_PROVIDERS) + 1 + len(OUR_RECIPES) - 2
    assert plugins["half_bridge@half-bridge"]["registrations"] == []


@pytest.mark.parametrize(
    ("selection", "hint"),  # the three typos and a deny-list one (more spellings: tests/unit)
    [("nonexistent", "'nonexistent'; installed plugins"),
     ("Nemotron3_Super", "'Nemotron3_Super' (did you mean 'nemotron3_super'?)"),
     ("nemotron3_super;aa_x", "(did you mean 'nemotron3_super,aa_x'?)"),
     ("-half_brige", "'-half_brige' (did you mean '-half_bridge'?)")],
)
def test_selection_matching_no_plugin_is_reported(plugin_env: dict[str, Path], selection: str, hint: str) -> None:
    data, _, stderr = _listing(plugin_env, selection)
    assert data["unmatched"] == [selection]
    line = next(line for line in stderr.splitlines() if "names no installed plugin" in line)
    assert line.startswith(f"MEGATRON_BRIDGE_PLUGINS={selection!r} names no installed plugin: ")
    assert hint in line
    assert ("installed plugins (distributions): aa_x (aa-x), half_bridge (half-bridge), "
            "nemotron3_super (foreign-nemotron, nemotron3-super)") in line
    strict = cli(plugin_env, "plugins", MEGATRON_BRIDGE_PLUGINS=selection, MEGATRON_BRIDGE_PLUGINS_STRICT="1")
    assert strict.returncode == 2 and hint in strict.stderr.splitlines()[-1]


@pytest.mark.parametrize(("selection", "loaded"), [("", []), ("aa_x", ["aa_x"]), (f"-half_bridge,-{FOREIGN},-aa_x",
                                                                              ["nemotron3_super"])])
def test_valid_selections_say_nothing(plugin_env: dict[str, Path], selection: str, loaded: list[str]) -> None:
    """The off switch and well-formed allow/deny lists: no warning, and strict passes."""
    data, _, stderr = _listing(plugin_env, selection)
    assert [p["name"] for p in data["plugins"]] == loaded and data["unmatched"] == []
    assert stderr == ""
    assert cli(plugin_env, "plugins", "--strict", MEGATRON_BRIDGE_PLUGINS=selection).returncode == 0
