"""The host adapter against the real Megatron-Bridge: bridge override policy, recipes, allow-list.

The allow-list and policy tests need a host nothing has installed into yet, so each runs in a fresh
interpreter (about 15 s of host import on CPU); the others may share this process's host.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

import pytest

from nemotron3_super.plugins import host
from nemotron3_super.plugins.manager import load_plugins

ARCH = "NemotronHForCausalLM"
pytestmark = pytest.mark.slow


def _fresh(body: str) -> None:
    """Run ``body`` (asserts) in a fresh interpreter that has imported the host and nothing of ours has
    touched its dispatch or allow-list yet: the suite's earlier tests install into this process's host."""
    code = textwrap.dedent("""
        import logging
        import pytest
        import nemotron3_super  # host fixes (no TE here) before the first megatron.bridge import
        import megatron  # fires the start-up trigger (nemotron3_super.pth), which would install our plugin ...
        from nemotron3_super.activation import uninstall
        uninstall()  # ... on `import megatron.bridge`: these tests install explicitly (as tests/conftest.py does)
        import megatron.bridge.models  # host bridges register on import
        from megatron.bridge.models.conversion import model_bridge as mb
        from nemotron3_super.plugins import host
        from nemotron3_super.plugins.manager import PluginInfo, PluginSet, Registration, load_plugins
        ARCH = "NemotronHForCausalLM"
    """) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_recipes_by_name_and_allow_list() -> None:
    _fresh("""
        import megatron.bridge.recipes as host_recipes
        from megatron.bridge.utils.instantiate_utils import instantiate, target_allowlist
        from nemotron3_super.architecture import SuperArchitecture, tiny_super

        plugin = PluginInfo(
            name="synthetic", distribution="synthetic", version="0",
            module="nemotron3_super.plugins.nemotron3_super_plugin",
            registrations=[Registration("recipe", "synthetic_tiny_config", "nemotron3_super.architecture:tiny_super",
                                        "synthetic", {"mode": "pretrain"})],
        )
        target = "nemotron3_super.architecture.tiny_super"
        assert not target_allowlist.is_allowed(target)
        report = host.install_into_host(PluginSet(plugins=[plugin], skipped=[]))
        assert report.recipes == ["synthetic_tiny_config"] and report.allowed_prefixes == ["nemotron3_super"], report
        assert host_recipes.synthetic_tiny_config.__name__ == "synthetic_tiny_config"
        assert host_recipes.synthetic_tiny_config() == tiny_super()  # the factory runs on first call
        assert target_allowlist.is_allowed(target)
        assert isinstance(instantiate({"_target_": target}), SuperArchitecture)

        clash = PluginInfo(name="clash", distribution="clash", version="0", module="x",
                           registrations=[Registration("recipe", "synthetic_tiny_config", "json:dumps", "clash",
                                                       {"mode": "pretrain"})])
        with pytest.raises(RuntimeError, match=r"recipe name 'synthetic_tiny_config' is already taken"):
            host.install_into_host(PluginSet(plugins=[clash], skipped=[]))
    """)


def test_bridge_override_policies() -> None:
    """host -> error -> plugin, in this order: only the last one changes the host's dispatch."""
    _fresh("""
        from megatron.bridge.models.nemotronh import NemotronHBridge
        from nemotron3_super.bridge import SuperBridge

        HOSTS = "megatron.bridge.models.nemotronh.nemotron_h_bridge.NemotronHBridge"
        assert type(mb.get_model_bridge(ARCH)) is NemotronHBridge  # the host's own, before any plugin

        report = host.install_into_host(load_plugins(refresh=True), bridge_policy="host", recipes=False)
        assert type(mb.get_model_bridge(ARCH)) is NemotronHBridge
        assert report.kept_host == {ARCH: HOSTS}, report

        with pytest.raises(host.BridgeConflictError, match=r"NemotronHForCausalLM, which the host already serves"):
            host.install_into_host(load_plugins(refresh=True), bridge_policy="error", recipes=False)
        assert type(mb.get_model_bridge(ARCH)) is NemotronHBridge

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("nemotron3_super.plugins.host").addHandler(handler)
        plugin_set = load_plugins(refresh=True)
        report = host.install_into_host(plugin_set, bridge_policy="plugin", recipes=False)
        assert type(mb.get_model_bridge(ARCH)) is SuperBridge
        assert report.replaced == {ARCH: HOSTS}, report
        replaced_lines = [r.getMessage() for r in records if "replaces host bridge" in r.getMessage()]
        assert replaced_lines == [
            f"plugin 'nemotron3_super' replaces host bridge {HOSTS} with nemotron3_super.bridge.SuperBridge "
            "for NemotronHForCausalLM (policy 'plugin')"
        ], replaced_lines
        # the bridge class carries what the host's decorator would have set
        assert SuperBridge.SOURCE_NAME == ARCH and SuperBridge.MODEL_TYPE == "nemotron_h"

        records.clear()
        assert host.install_into_host(plugin_set, bridge_policy="plugin", recipes=False) is report  # idempotent
        assert not [r for r in records if "replaces host bridge" in r.getMessage()]
        # a later install (another plugin set, as `nemotron3-super env` makes) still names the host's bridge
        later = host.install_into_host(load_plugins(refresh=True), bridge_policy="plugin", recipes=False)
        assert later is not report and later.replaced == {ARCH: HOSTS}, later
        assert not [r for r in records if "replaces host bridge" in r.getMessage()]  # logged once per process
    """)


@pytest.fixture(scope="module")
def mb():  # noqa: ANN201 - the host's dispatch module
    import nemotron3_super  # noqa: F401 - host fixes (no TE here) before the first megatron.bridge import
    import megatron.bridge.models  # noqa: F401 - host bridges register on import
    from megatron.bridge.models.conversion import model_bridge

    return model_bridge


def test_our_recipes_by_name_in_host(mb) -> None:  # noqa: ANN001
    import megatron.bridge.recipes as host_recipes

    report = host.install_into_host(load_plugins(refresh=True))
    assert set(report.recipes) == {"nemotron3_super_pretrain_config", "nemotron3_super_pretrain_nvfp4_config",
                                   "nemotron3_super_sft_config", "nemotron3_super_lora_config"}
    assert host_recipes.nemotron3_super_sft_config.plugin_target == (
        "nemotron3_super.recipes.factories:nemotron3_super_sft_config")
    config = host_recipes.nemotron3_super_sft_config()  # imports and runs our factory
    assert type(config).__name__ == "ConfigContainer" and config.model.moe_latent_size == 1024
    assert callable(host_recipes.nemotron_3_super_pretrain_config)  # the host's own recipe is untouched


def test_policy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.ENV_BRIDGE_POLICY, "host")
    assert host.resolve_bridge_policy() == "host"
    assert host.resolve_bridge_policy("error") == "error"  # the argument wins
    monkeypatch.setenv(host.ENV_BRIDGE_POLICY, "newest")
    with pytest.raises(ValueError, match=r"'newest' \(from MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY\) is not one of"):
        host.resolve_bridge_policy()


def test_install_imports_no_model_code_until_the_bridge_is_used() -> None:
    """Installing costs no import of our bridge, provider or recipe factories (fresh interpreter);
    first use resolves them."""
    import json
    import subprocess
    import sys
    import tempfile

    code = (
        "import json, sys\n"
        "import nemotron3_super\n"
        "import megatron.bridge.models\n"
        "from megatron.bridge.models.conversion import model_bridge\n"
        "from nemotron3_super.plugins import install_into_host, load_plugins\n"
        "import megatron.bridge.recipes\n"
        "install_into_host(load_plugins(), bridge_policy='plugin')\n"
        "ours = ('nemotron3_super.bridge', 'nemotron3_super.provider', 'nemotron3_super.recipes.factories')\n"
        "before = sorted(m for m in ours if m in sys.modules)\n"
        "bridge = model_bridge.get_model_bridge('NemotronHForCausalLM')\n"
        "print(json.dumps({'before': before, 'type': type(bridge).__module__ + '.' + type(bridge).__name__,\n"
        "                  'provider': type(bridge).PROVIDER_CLASS.__name__}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"before": [], "type": "nemotron3_super.bridge.SuperBridge", "provider": "SuperModelProvider"}
