"""SuperBridge inside the host's own conversion loop (load_weights_hf_to_megatron / stream_weights_megatron_to_hf):
bit-exact both ways, and strict where the host alone would only log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # needs mamba-ssm (installed by .ci/env.sh): megatron-core's MambaMixer needs it to build


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    return write_tiny_checkpoint(tiny_super(), tmp_path_factory.mktemp("host") / "hf")


def _host_round_trip(folder: Path) -> tuple[dict, object]:
    import nemotron3_super  # noqa: F401 - host fixes before the first megatron.bridge import (no TE here)
    from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM

    from nemotron3_super.bridge import SuperBridge
    from nemotron3_super.conversion.hf_io import HFCheckpoint
    from nemotron3_super.conversion.megatron_io import build_model, single_process_group

    with single_process_group():
        model = build_model(HFCheckpoint(folder).arch, torch.bfloat16)
        pretrained = PreTrainedCausalLM.from_pretrained(str(folder))
        bridge = SuperBridge()
        bridge.hf_config = pretrained.config
        bridge.load_weights_hf_to_megatron(pretrained, [model])
        return dict(bridge.stream_weights_megatron_to_hf([model], pretrained, show_progress=False)), model


def test_host_loop_round_trips_bit_exactly(tiny_hf: Path) -> None:
    from nemotron3_super.conversion.audit import bits_equal
    from nemotron3_super.conversion.hf_io import HFCheckpoint

    exported, _ = _host_round_trip(tiny_hf)
    original = HFCheckpoint(tiny_hf)
    assert set(exported) == set(original.tensors)
    different = [n for n, t in exported.items() if not bits_equal(t, original.get(n))]
    assert different == []
    assert exported["mtp.layers.1.mixer.gate.e_score_correction_bias"].dtype == torch.float32


def test_host_loop_missing_tensor_is_an_error(tiny_hf: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from nemotron3_super.conversion.hf_io import CheckpointError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["mtp.layers.0.mixer.q_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"without a mapping or HF tensor: "
                                              r"mtp.layers.0.mtp_model_layer.layers.0.self_attention.linear_qkv"):
        _host_round_trip(broken)
