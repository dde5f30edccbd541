"""The host adapter against the real Megatron-Bridge: bridge override policy, recipes, allow-list.

One process imports the host once (about 15 s on CPU). Order matters and is the file's order: the
allow-list test must see the host before anything registered our prefix, and the policies run
host -> error -> plugin because only the last one changes the host's dispatch.
"""

from __future__ import annotations

import logging

import pytest

from nemotron3_super.plugins import host
from nemotron3_super.plugins.manager import PluginInfo, PluginSet, Registration, load_plugins

ARCH = "NemotronHForCausalLM"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mb():  # noqa: ANN201 - the host's dispatch module
    from nemotron3_super.host_compat import ensure_host_importable

    ensure_host_importable()
    import megatron.bridge.models  # noqa: F401 - host bridges register on import
    from megatron.bridge.models.conversion import model_bridge

    return model_bridge


def test_recipes_by_name_and_allow_list(mb) -> None:  # noqa: ANN001
    import megatron.bridge.recipes as host_recipes
    from megatron.bridge.utils.instantiate_utils import instantiate, target_allowlist

    from nemotron3_super.architecture import SuperArchitecture, tiny_super

    plugin = PluginInfo(
        name="synthetic", distribution="synthetic", version="0", module="nemotron3_super.plugins.nemotron3_super_plugin",
        registrations=[Registration("recipe", "synthetic_tiny_config", "nemotron3_super.architecture:tiny_super",
                                    "synthetic", {"mode": "pretrain"})],
    )
    target = "nemotron3_super.architecture.tiny_super"
    assert not target_allowlist.is_allowed(target)
    report = host.install_into_host(PluginSet(plugins=[plugin], skipped=[]))
    assert report.recipes == ["synthetic_tiny_config"] and report.allowed_prefixes == ["nemotron3_super"]
    assert host_recipes.synthetic_tiny_config is tiny_super
    assert target_allowlist.is_allowed(target)
    assert isinstance(instantiate({"_target_": target}), SuperArchitecture)

    clash = PluginInfo(name="clash", distribution="clash", version="0", module="x",
                       registrations=[Registration("recipe", "synthetic_tiny_config", "json:dumps", "clash",
                                                   {"mode": "pretrain"})])
    with pytest.raises(RuntimeError, match=r"recipe name 'synthetic_tiny_config' is already taken"):
        host.install_into_host(PluginSet(plugins=[clash], skipped=[]))


def test_bridge_override_policies(mb, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    from megatron.bridge.models.nemotronh import NemotronHBridge

    from nemotron3_super.bridge import SuperBridge

    assert type(mb.get_model_bridge(ARCH)) is NemotronHBridge  # the host's own, before any plugin

    report = host.install_into_host(load_plugins(refresh=True), bridge_policy="host", recipes=False)
    assert type(mb.get_model_bridge(ARCH)) is NemotronHBridge
    assert report.kept_host == {ARCH: "megatron.bridge.models.nemotronh.nemotron_h_bridge.NemotronHBridge"}

    with pytest.raises(host.BridgeConflictError, match=r"NemotronHForCausalLM, which the host already serves"):
        host.install_into_host(load_plugins(refresh=True), bridge_policy="error", recipes=False)
    assert type(mb.get_model_bridge(ARCH)) is NemotronHBridge

    plugin_set = load_plugins(refresh=True)
    with caplog.at_level(logging.WARNING, logger="nemotron3_super.plugins.host"):
        report = host.install_into_host(plugin_set, bridge_policy="plugin", recipes=False)
    assert type(mb.get_model_bridge(ARCH)) is SuperBridge
    assert report.replaced == {ARCH: "megatron.bridge.models.nemotronh.nemotron_h_bridge.NemotronHBridge"}
    replaced_lines = [r.getMessage() for r in caplog.records if "replaces host bridge" in r.getMessage()]
    assert replaced_lines == [
        "plugin 'nemotron3_super' replaces host bridge megatron.bridge.models.nemotronh.nemotron_h_bridge."
        "NemotronHBridge with nemotron3_super.bridge.SuperBridge for NemotronHForCausalLM (policy 'plugin')"
    ]
    # the bridge class carries what the host's decorator would have set
    assert SuperBridge.SOURCE_NAME == ARCH and SuperBridge.MODEL_TYPE == "nemotron_h"

    caplog.clear()
    assert host.install_into_host(plugin_set, bridge_policy="plugin", recipes=False) is report  # idempotent
    assert not [r for r in caplog.records if "replaces host bridge" in r.getMessage()]


def test_our_recipes_by_name_in_host(mb) -> None:  # noqa: ANN001
    import megatron.bridge.recipes as host_recipes

    from nemotron3_super.recipes import factories

    report = host.install_into_host(load_plugins(refresh=True))
    assert set(report.recipes) == {"nemotron3_super_pretrain_config", "nemotron3_super_pretrain_nvfp4_config",
                                   "nemotron3_super_sft_config", "nemotron3_super_lora_config"}
    assert host_recipes.nemotron3_super_sft_config is factories.nemotron3_super_sft_config
    assert callable(host_recipes.nemotron_3_super_pretrain_config)  # the host's own recipe is untouched


def test_policy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.ENV_BRIDGE_POLICY, "host")
    assert host.resolve_bridge_policy() == "host"
    assert host.resolve_bridge_policy("error") == "error"  # the argument wins
    monkeypatch.setenv(host.ENV_BRIDGE_POLICY, "newest")
    with pytest.raises(ValueError, match=r"'newest' \(from MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY\) is not one of"):
        host.resolve_bridge_policy()
