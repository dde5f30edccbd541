"""Conversion I/O without building models: checkpoint validation, bit-exact audit, lazy CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nemotron3_super.architecture import super_120b_a12b, tiny_super
from nemotron3_super.conversion.audit import audit, bits_equal
from nemotron3_super.conversion.hf_io import CheckpointError, HFCheckpoint, ShardedWriter


def write_synthetic(folder: Path, arch=None, *, drop: str | None = None, extra: dict | None = None,
                    reshape: str | None = None, config_extra: dict | None = None) -> Path:
    """A released-style folder from ``hf_tensors()`` (values: the tensor's index, so tensors differ)."""
    arch = arch or tiny_super()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, (name, shape) in enumerate(arch.hf_tensors()):
        if name == drop:
            continue
        shape = (shape[0] + 1, *shape[1:]) if name == reshape else shape
        dtype = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
        tensors[name] = torch.full(shape, float(i % 97), dtype=dtype)
    tensors.update(extra or {})
    save_file(tensors, str(folder / "model.safetensors"))
    config = arch.to_hf_config_dict({"torch_dtype": "bfloat16", **(config_extra or {})})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_valid_folder_indexes_every_tensor(tmp_path: Path) -> None:
    ckpt = HFCheckpoint(write_synthetic(tmp_path / "ok"))
    ckpt.check_quantized()
    ckpt.check_against(ckpt.arch)
    assert len(ckpt.tensors) == tiny_super().hf_tensor_count()
    assert ckpt.tensors["backbone.layers.1.mixer.gate.e_score_correction_bias"].torch_dtype == torch.float32


def test_transformers_embedding_spelling_is_accepted(tmp_path: Path) -> None:
    folder = write_synthetic(tmp_path / "alias", drop="backbone.embeddings.weight",
                             extra={"backbone.embedding.weight": torch.zeros(256, 128, dtype=torch.bfloat16)})
    ckpt = HFCheckpoint(folder)
    ckpt.check_against(ckpt.arch)
    assert ckpt.tensors["backbone.embeddings.weight"].stored_name == "backbone.embedding.weight"
    assert ckpt.get("backbone.embeddings.weight").shape == (256, 128)


def test_wrong_architecture_is_named(tmp_path: Path) -> None:
    folder = write_synthetic(tmp_path / "llama", config_extra={})
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: architectures=\['LlamaForCausalLM'\], expected"):
        HFCheckpoint(folder)


@pytest.mark.parametrize("kind, needle", [
    ("missing", r"missing tensor 'mtp.layers.1.mixer.gate.weight' \(expected shape \[8, 128\]\)"),
    ("extra", r"unexpected tensor 'backbone.layers.0.mixer.bogus' in model.safetensors"),
    ("shape", r"tensor 'backbone.layers.4.mixer.q_proj.weight' in model.safetensors has shape \[129, 128\], "
              r"expected \[128, 128\]"),
])
def test_tensor_set_problems_are_named(tmp_path: Path, kind: str, needle: str) -> None:
    folder = write_synthetic(
        tmp_path / kind, drop="mtp.layers.1.mixer.gate.weight" if kind == "missing" else None,
        extra={"backbone.layers.0.mixer.bogus": torch.zeros(2)} if kind == "extra" else None,
        reshape="backbone.layers.4.mixer.q_proj.weight" if kind == "shape" else None)
    ckpt = HFCheckpoint(folder)
    with pytest.raises(CheckpointError, match=needle):
        ckpt.check_against(ckpt.arch)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    folder = write_synthetic(tmp_path / "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file: tensors need "
                                              rf"{len(data)} bytes, the file has {len(data) - 1000}"):
        HFCheckpoint(folder)


def test_quantization_config_is_refused(tmp_path: Path) -> None:
    folder = write_synthetic(tmp_path / "nvfp4", config_extra={"quantization_config": {"quant_algo": "NVFP4"}})
    with pytest.raises(CheckpointError, match=r"quantization_config \(NVFP4\) present: quantized checkpoints "
                                              r"are not read here \(`convert import` and `roundtrip` dequantize"):
        HFCheckpoint(folder)


def test_quantized_weights_without_config_are_refused(tmp_path: Path) -> None:
    folder = write_synthetic(tmp_path / "fp8", extra={
        "backbone.layers.0.mixer.in_proj.weight": torch.zeros(328, 64, dtype=torch.uint8),
        "backbone.layers.0.mixer.in_proj.weight_scale": torch.ones(328, 4)})
    ckpt = HFCheckpoint(folder)
    with pytest.raises(CheckpointError, match=r"in_proj.weight' is U8\[328, 64\]: a quantized \(NVFP4/FP8\)"):
        ckpt.check_quantized()


def test_bits_equal_is_bitwise() -> None:
    a = torch.tensor([1.0, float("nan"), -0.0], dtype=torch.bfloat16)
    assert bits_equal(a, a.clone())  # NaN equals itself bitwise
    assert not bits_equal(a, torch.tensor([1.0, float("nan"), 0.0], dtype=torch.bfloat16))  # -0 vs +0
    assert not bits_equal(a.float(), a.float().to(torch.float64).float().double().float().to(torch.float16))
    assert not bits_equal(torch.zeros(2, 3), torch.zeros(3, 2))


def test_audit_names_the_one_flipped_bit(tmp_path: Path) -> None:
    ref = write_synthetic(tmp_path / "ref")
    cand = write_synthetic(tmp_path / "cand")
    report = audit(ref, cand)
    assert report.ok and report.tensors == tiny_super().hf_tensor_count()
    assert report.mtp_tensors == sum(1 for n in tiny_super().hf_tensor_names() if n.startswith("mtp."))
    assert len(report.fp32_tensors) == 4 and "IDENTICAL" in report.render()

    from safetensors.torch import load_file
    tensors = load_file(str(cand / "model.safetensors"))
    bias = tensors["mtp.layers.1.mixer.gate.e_score_correction_bias"]
    bias.view(torch.int32)[0] ^= 1  # lowest mantissa bit of one FP32 element
    tensors["backbone.layers.1.mixer.gate.e_score_correction_bias"] = tensors[
        "backbone.layers.1.mixer.gate.e_score_correction_bias"].to(torch.bfloat16)
    save_file(tensors, str(cand / "model.safetensors"))
    report = audit(ref, cand)
    assert not report.ok
    assert report.different == ["backbone.layers.1.mixer.gate.e_score_correction_bias "
                                "(dtype torch.float32 vs torch.bfloat16)",
                                "mtp.layers.1.mixer.gate.e_score_correction_bias (values differ)"]


def test_sharded_writer_splits_and_indexes(tmp_path: Path) -> None:
    writer = ShardedWriter(tmp_path, shard_bytes=1000)
    for i in range(5):
        writer.add(f"t{i}", torch.zeros(200, dtype=torch.float32))  # 800 bytes: one per shard
    names = writer.close()
    assert names == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t3"] == "model-00004-of-00005.safetensors"
    assert index["metadata"]["total_size"] == 4000
    assert not list(tmp_path.glob("shard-*"))


def test_released_super_names_count() -> None:
    assert super_120b_a12b().hf_tensor_count() == 42_683


def test_cli_listing_commands_stay_light() -> None:
    code = ("import sys; from nemotron3_super import cli; cli.build_parser().parse_args(['plugins']);"
            "cli.build_parser().parse_args(['convert', 'import', '--hf-model', 'a', '--megatron-path', 'b']);"
            "heavy = [m for m in ('torch', 'megatron', 'transformers') if m in sys.modules]; print(heavy);"
            "sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
