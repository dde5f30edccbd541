"""The local (TE-free) spec writes its checkpoint under the TE spec's keys, so one torch_dist checkpoint loads
into either spec. Built on CPU; the TE side of the same check (load into a TE model and back) runs in
tests/gpu/test_te_spec.py."""

from __future__ import annotations

import re

import pytest

from nemotron3_super.architecture import tiny_super

pytestmark = pytest.mark.slow  # builds a megatron-core model (needs mamba-ssm, installed by .ci/env.sh)


def test_local_spec_checkpoint_keys_are_the_te_specs(model_parallel) -> None:
    from nemotron3_super.conversion.megatron_io import cpu_current_device
    from nemotron3_super.provider import SuperModelProvider

    model_parallel(tp=1, ep=1, pp=1)
    provider = SuperModelProvider.from_architecture(
        tiny_super(), spec_impl="local", use_cpu_initialization=True, moe_token_dispatcher_type="allgather")
    provider.finalize()
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    with cpu_current_device():
        model = provider.provide()
        sharded = model.sharded_state_dict()
    keys = {v.key for v in nested_values(sharded) if isinstance(v, ShardedBase)}  # the keys on disk
    params = {name for name, _ in model.named_parameters()}
    pattern = tiny_super().hybrid_override_pattern  # "MEME*ME"
    for i, kind in enumerate(pattern):
        prefix = f"decoder.layers.{i}."
        if kind == "M":  # module decoder.layers.i.norm, stored as TE's fused in_proj norm
            assert f"{prefix}norm.weight" in params and f"{prefix}norm.weight" not in keys
            assert f"{prefix}mixer.in_proj.layer_norm_weight" in keys
        elif kind == "*":
            assert f"{prefix}input_layernorm.weight" in params
            assert f"{prefix}self_attention.linear_qkv.layer_norm_weight" in keys
            assert f"{prefix}input_layernorm.weight" not in keys
        elif kind == "E":  # a separate norm in both specs: unchanged
            assert f"{prefix}pre_mlp_layernorm.weight" in keys
    # the MTP block's attention layer is built from the same spec: its norm moves too
    mtp = {k for k in keys if k.startswith("mtp.")}
    assert any(re.search(r"mtp_model_layer\.layers\.0\.self_attention\.linear_qkv\.layer_norm_weight$", k)
               for k in mtp), sorted(mtp)
    assert not any(k.endswith(".input_layernorm.weight") or re.search(r"layers\.\d+\.norm\.weight$", k)
                   for k in keys), "a local-only norm key would not load into the TE spec"
    # TE's stand-alone norms (TENorm) and latent projections (TELinear) checkpoint an _extra_state; the norms
    # it fuses into the next linear do not (measured on an H200 with TE 2.20.2: loading failed on both sides)
    for key in ("decoder.layers.1.pre_mlp_layernorm._extra_state", "decoder.final_norm._extra_state",
                "decoder.layers.1.mlp.fc1_latent_proj._extra_state", "mtp.layers.0.enorm._extra_state"):
        assert key in keys, key
    assert not [k for k in keys if "layer_norm__extra_state" in k or k.endswith(".norm._extra_state")]
