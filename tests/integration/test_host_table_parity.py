"""Our bridge table against the host's ``NemotronHBridge`` table, name by name, without Transformer Engine.

The host's table was written for the TE layer spec (fused pre-norms ``mixer.in_proj.layer_norm_weight``,
grouped experts ``linear_fc1.weight{e}``) and is what NVIDIA verified on GPUs; no machine here can build a TE
model, so the TE names of our table are checked against it instead: every Megatron name the host's registry
covers for the released Super config (each ``*`` expanded: 88 layers, 512 experts on the MoE layers, the MTP
block) must map to the same HF name(s) in ours, except the differences listed with their reasons below.
"""

from __future__ import annotations

import types

import pytest

pytestmark = pytest.mark.slow  # imports the host and looks up ~88,000 names in each table (~20 s)

# host Megatron pattern -> why our table maps it differently (the test fails when one appears or goes away)
# (none today: decoder.final_layernorm.weight, TransformerBlock's name for the final norm, which the host maps
# and HybridStack does not use, is in our table too, so the host's own bridge tests pass against it)
EXPECTED_DIFFERENCES: dict[str, str] = {}
# names only our table maps, with why (checked to be in ours and not the host's)
OURS_ONLY = {
    "mtp.layers.0.mtp_model_layer.layers.0.input_layernorm.weight":
        "the MTP attention block's pre-norm in the TE-free layout (the host maps it only fused, TE spec)",
    "decoder.layers.1.mlp.experts.linear_fc1_weight": "TE-free grouped experts (GroupedMLP), stacked",
    "mtp.layers.0.mtp_model_layer.layers.1.mlp.experts.linear_fc2_weight": "the same in the MTP block",
}


def _expand(pattern: str, arch) -> list[str]:
    """Every concrete name of a host pattern for ``arch``; each ``*`` gets its range from the text before it."""
    star = pattern.find("*")
    if star < 0:
        return [pattern]
    before, moe_layers = pattern[:star], [i for i, k in enumerate(arch.hybrid_override_pattern) if k == "E"]
    if before.endswith("mtp_model_layer.layers."):
        values = range(len(arch.mtp_hybrid_override_pattern))
    elif before.endswith("mtp.layers."):
        values = range(arch.num_nextn_predict_layers)
    elif before.endswith("decoder.layers."):  # expert names exist on MoE layers only
        values = moe_layers if ".experts." in pattern else range(arch.num_hidden_layers)
    elif before.endswith(("local_experts.", ".weight")):
        values = range(arch.n_routed_experts)
    else:
        raise AssertionError(f"host pattern {pattern!r}: no range known for the '*' after {before!r}")
    return [name for v in values for name in _expand(f"{before}{v}{pattern[star + 1:]}", arch)]


def test_our_table_maps_every_host_name_as_the_host_does() -> None:
    from nemotron3_super.architecture import super_120b_a12b  # importing nemotron3_super applies the host fixes
    from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge

    from nemotron3_super.bridge.pairing import hf_names, registry_for

    arch = super_120b_a12b()
    host_bridge = NemotronHBridge()
    host_bridge.hf_config = types.SimpleNamespace(**arch.to_hf_config_dict())
    host, ours = host_bridge.mapping_registry(), registry_for(arch)

    def names(registry, name: str) -> tuple[str, ...] | None:
        mapping = registry.megatron_to_hf_lookup(name)
        return tuple(sorted(hf_names(mapping))) if mapping is not None else None

    patterns = [mapping.megatron_param for _, mapping in host._compiled_patterns]
    assert any("layer_norm_weight" in p for p in patterns) and any(p.endswith("weight*") for p in patterns)
    checked, differences = 0, {}
    for pattern in patterns:
        for name in _expand(pattern, arch):
            checked += 1
            theirs, mine = names(host, name), names(ours, name)
            assert theirs is not None, f"host pattern {pattern!r} does not map its own name {name!r}"
            if mine != theirs:
                differences.setdefault(pattern, []).append(f"{name}: host {theirs}, ours {mine}")
    print(f"{checked:,} Megatron names of the host's table checked; differences:")
    for pattern, found in differences.items():
        print(f"  {pattern} ({len(found)} names, e.g. {found[0]}): {EXPECTED_DIFFERENCES.get(pattern, 'UNEXPLAINED')}")
    assert checked > arch.n_routed_experts * 40 * 4  # every expert of every MoE layer, both spellings
    assert set(differences) == set(EXPECTED_DIFFERENCES), {p: d[:3] for p, d in differences.items()}
    for name, why in OURS_ONLY.items():
        assert names(host, name) is None and names(ours, name) is not None, (name, why)
