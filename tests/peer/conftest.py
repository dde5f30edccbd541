"""The host's own tests, run against our bridge. The plugin is installed into the host first (the
package's start-up hook does this after pip install; done here explicitly so the folder does not depend
on it), so AutoBridge dispatches NemotronHForCausalLM to SuperBridge."""

from __future__ import annotations

import pytest

from nemotron3_super.plugins import install_into_host, load_plugins

install_into_host(load_plugins())

# Tests the host's own bridge fails here too (see each vendored file's docstring): node id -> reason.
HOST_ONLY_FAILURES = {
    f"test_nemotron_h_bridge.py::TestNemotronHBridge::{name}":
        "needs Transformer Engine: finalize() of the host's TE-default provider raises "
        "'apply_rope_fusion is not available' (the host's own NemotronHBridge fails it too)"
    for name in ("test_provider_bridge_basic", "test_provider_bridge_mamba_config")
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the host-only failures xfail (strict: a pass is reported, so the list cannot go stale)."""
    from nemotron3_super.host_compat import have_transformer_engine

    if have_transformer_engine():
        return
    for item in items:
        for node_id, reason in HOST_ONLY_FAILURES.items():
            if item.nodeid.endswith(node_id):
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True, raises=ValueError))
