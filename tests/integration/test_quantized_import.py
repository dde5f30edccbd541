"""Quantized releases end to end on CPU, with fixtures made by NVIDIA ModelOpt itself (FP8, NVFP4, a Super-like
MIXED_PRECISION): dequantized values against ModelOpt's own dequantization, import, export, transformers load,
the round-trip audit, FP32 import, nothing written on a layout error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nemotron3_super.architecture import tiny_super
from nemotron3_super.conversion.audit import audit, bits_equal
from nemotron3_super.conversion.hf_io import CheckpointError, HFCheckpoint
from nemotron3_super.conversion.quantized import DequantizedCheckpoint, open_checkpoint
from nemotron3_super.conversion.quantized_fixtures import SCHEMES, write_modelopt_checkpoint

pytestmark = pytest.mark.slow  # ModelOpt quantizes and exports three tiny models; megatron builds


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per scheme: the ModelOpt folder, `convert import` (BF16) and its report, the export."""
    from nemotron3_super.conversion.commands import export_checkpoint, import_checkpoint

    out = {}
    for scheme in SCHEMES:
        root = tmp_path_factory.mktemp(scheme)
        hf = write_modelopt_checkpoint(tiny_super(), root / "hf", scheme)
        report = import_checkpoint(hf, root / "megatron")
        export_checkpoint(hf, root / "megatron", root / "exported")
        out[scheme] = {"hf": hf, "megatron": root / "megatron", "exported": root / "exported", "report": report}
    return out


def modelopt_dequantize(ckpt: DequantizedCheckpoint, name: str) -> torch.Tensor:
    """ModelOpt's own float32 dequantization of one weight (its QTensor classes, its arithmetic)."""
    from modelopt.torch.quantization.qtensor.fp8_tensor import FP8QTensor
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    q = ckpt.quantized[name]
    data = ckpt.read(q.weight)
    if q.format == "NVFP4":
        return NVFP4QTensor(torch.Size(q.shape), torch.float32, data).dequantize(
            dtype=torch.float32, scale=ckpt.read(q.scale), double_scale=ckpt.read(q.scale_2), block_sizes={-1: 16})
    return FP8QTensor(torch.Size(q.shape), torch.float32, data).dequantize(dtype=torch.float32,
                                                                          scale=ckpt.read(q.scale))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantized_weights_equal_modelopt_bit_for_bit(converted, scheme: str) -> None:
    ckpt = open_checkpoint(converted[scheme]["hf"])
    assert isinstance(ckpt, DequantizedCheckpoint)
    formats = {q.format for q in ckpt.quantized.values()}
    assert formats == {"fp8": {"FP8"}, "nvfp4": {"NVFP4"}, "mixed": {"FP8", "NVFP4"}}[scheme]
    for name in ckpt.quantized:
        reference = modelopt_dequantize(ckpt, name)
        assert bits_equal(ckpt.dequantize(name), reference), name  # float32, before any cast
        assert bits_equal(ckpt.get(name), reference.to(torch.bfloat16)), name  # after the BF16 cast
    if scheme == "mixed":  # formats come from quantized_layers, per module, not from names
        assert ckpt.quantized["backbone.layers.1.mixer.shared_experts.up_proj.weight"].format == "FP8"
        assert ckpt.quantized["backbone.layers.3.mixer.shared_experts.up_proj.weight"].format == "NVFP4"
        assert ckpt.quantized["backbone.layers.1.mixer.fc1_latent_proj.weight"].format == "FP8"
        assert "backbone.layers.3.mixer.fc1_latent_proj.weight" not in ckpt.quantized  # BF16 there


@pytest.mark.parametrize("scheme", SCHEMES)
def test_import_export_audit_against_direct_dequantization(converted, scheme: str) -> None:
    paths = converted[scheme]
    report = audit(paths["hf"], paths["exported"])  # what `roundtrip` runs on a quantized input
    print(report.render())
    assert report.ok and report.tensors == tiny_super().hf_tensor_count(), report.render()
    assert report.dequantized and len(report.fp32_tensors) == 4
    rendered = paths["report"].render("convert import")
    assert "not the BF16 release" in rendered and ("NVFP4 weights" in rendered or "FP8 weights" in rendered)
    meta = json.loads((paths["megatron"] / "nemotron3_super.json").read_text())
    assert meta["dequantized"]["quant_algo"] == {"fp8": "FP8", "nvfp4": "NVFP4", "mixed": "MIXED_PRECISION"}[scheme]
    assert "quantization_config" not in meta["hf_config"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_export_is_a_plain_bf16_folder_that_loads_in_transformers(converted, scheme: str) -> None:
    from transformers import AutoModelForCausalLM

    exported = converted[scheme]["exported"]
    config = json.loads((exported / "config.json").read_text())
    assert "quantization_config" not in config and not (exported / "hf_quant_config.json").exists()
    ckpt = HFCheckpoint(exported)  # the plain reader refuses anything quantized
    ckpt.check_quantized()
    assert {i.dtype for i in ckpt.tensors.values()} == {"BF16", "F32"}
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32, local_files_only=True).eval()
    name = "layers.1.mixer.shared_experts.up_proj.weight"  # quantized in all three (transformers fuses experts)
    dequantized = open_checkpoint(converted[scheme]["hf"]).get(f"backbone.{name}")
    assert dequantized.dtype == torch.bfloat16
    assert torch.equal(model.state_dict()[f"model.{name}"], dequantized.float())
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 2, 7, 3]])).logits).all()


def test_float32_import_keeps_the_float32_dequantization(converted, process_group, tmp_path: Path) -> None:
    from megatron.core import dist_checkpointing

    from nemotron3_super.cli import main

    hf = converted["mixed"]["hf"]
    assert main(["convert", "import", "--hf-model", str(hf), "--megatron-path", str(tmp_path / "m32"),
                 "--dtype", "float32"]) == 0
    stored = dist_checkpointing.load_plain_tensors(str(tmp_path / "m32" / "iter_0000000"))
    ckpt = open_checkpoint(hf, torch.float32)
    fc1 = stored["decoder.layers.1.mlp.experts.experts.linear_fc1.weight"]  # [experts, out, in]
    assert fc1.dtype == torch.float32
    for e in range(fc1.shape[0]):  # NVFP4 routed experts
        assert bits_equal(fc1[e], ckpt.dequantize(f"backbone.layers.1.mixer.experts.{e}.up_proj.weight"))
    assert bits_equal(stored["decoder.layers.1.mlp.shared_experts.linear_fc1.weight"],  # FP8 shared expert
                      ckpt.dequantize("backbone.layers.1.mixer.shared_experts.up_proj.weight"))


def test_layout_error_writes_nothing(converted, tmp_path: Path) -> None:
    from nemotron3_super.conversion.commands import import_checkpoint

    broken = shutil.copytree(converted["nvfp4"]["hf"], tmp_path / "g32")
    quant = json.loads((broken / "hf_quant_config.json").read_text())
    quant["quantization"]["group_size"] = 32
    (broken / "hf_quant_config.json").write_text(json.dumps(quant))
    with pytest.raises(CheckpointError, match=r"hf_quant_config.json: NVFP4 group_size=32, expected 16"):
        import_checkpoint(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g32"]  # no output, no partial folder
