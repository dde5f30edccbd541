"""Quantized (ModelOpt-format) checkpoints without building models: the dequantizer's arithmetic and every
layout error, on hand-built folders (the ModelOpt-made fixtures are in tests/integration/test_quantized_import.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nemotron3_super.architecture import tiny_super
from nemotron3_super.conversion.audit import bits_equal
from nemotron3_super.conversion.hf_io import CheckpointError, HFCheckpoint
from nemotron3_super.conversion.quantized import (DequantizedCheckpoint, dequantize_fp8, dequantize_nvfp4,
                                                  open_checkpoint)

EXPERT = "backbone.layers.1.mixer.experts.0.up_proj"  # [64, 64] in tiny Super (latent 64 -> 64)
SHARED = "backbone.layers.1.mixer.shared_experts.down_proj"  # [128, 128]
IN_PROJ = "backbone.layers.0.mixer.in_proj"  # [328, 128]


def nvfp4_parts(out: int, cols: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random codes packed as ModelOpt packs them, positive FP8 block scales, a global scale."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out, cols), generator=gen, dtype=torch.uint8)
    return {"weight": codes[:, 0::2] | (codes[:, 1::2] << 4),
            "weight_scale": (torch.rand(out, cols // 16, generator=gen) * 4 + 0.1).to(torch.float8_e4m3fn),
            "weight_scale_2": torch.tensor(0.0123, dtype=torch.float32),
            "input_scale": torch.tensor(0.5, dtype=torch.float32)}


def fp8_parts(out: int, cols: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"weight": (torch.randn(out, cols, generator=gen) * 50).to(torch.float8_e4m3fn),
            "weight_scale": torch.tensor(0.0031, dtype=torch.float32),
            "input_scale": torch.tensor(0.25, dtype=torch.float32)}


def write_quantized(folder: Path, modules: dict[str, str], *, algo: str = "MIXED_PRECISION", listed=None,
                    edit=None, hq_extra: dict | None = None, qc: dict | None = None) -> Path:
    """tiny Super with ``modules`` ({module: FP8|NVFP4}) quantized; ``listed``: quantized_layers (default:
    ``modules``); ``edit(tensors)`` breaks the tensors; ``hq_extra`` / ``qc`` override the JSON files."""
    arch = tiny_super()
    shapes = dict(arch.hf_tensors())
    tensors = {n: torch.randn(s).to(torch.float32 if n.endswith("correction_bias") else torch.bfloat16)
               for n, s in shapes.items()}
    for module, fmt in modules.items():
        out, cols = shapes[f"{module}.weight"]
        parts = nvfp4_parts(out, cols) if fmt == "NVFP4" else fp8_parts(out, cols)
        tensors.update({f"{module}.{k}": v for k, v in parts.items()})
    if edit:
        edit(tensors)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    listed = modules if listed is None else listed
    layers = {m: {"quant_algo": f, **({"group_size": 16} if f == "NVFP4" else {})} for m, f in listed.items()}
    hq = {"quant_algo": algo, "kv_cache_quant_algo": None,
          **({"quantized_layers": layers} if algo == "MIXED_PRECISION" else {}),
          **({"group_size": 16} if algo == "NVFP4" else {}), **(hq_extra or {})}
    (folder / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": hq}))
    qc = qc if qc is not None else {"quant_method": "modelopt", "quant_algo": hq["quant_algo"]}
    config = arch.to_hf_config_dict({"torch_dtype": "bfloat16", "quantization_config": qc})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_nvfp4_nibble_order_and_table() -> None:
    packed = torch.tensor([[0x71, 0x8F] + [0] * 6], dtype=torch.uint8)  # 16 columns in one block
    out = dequantize_nvfp4(packed, torch.tensor([[2.0]]).to(torch.float8_e4m3fn), torch.tensor(0.5))
    assert out.dtype == torch.float32 and out.shape == (1, 16)
    assert out[0, :4].tolist() == [0.5, 6.0, -6.0, 0.0]  # low nibble = even column; code 15 = -6
    assert not torch.signbit(out[0, 3])  # code 8 is +0 in ModelOpt's table: the bits must match it


def test_fp8_is_weight_times_scale_in_float32() -> None:
    w = torch.tensor([[1.5, -448.0, 0.001953125]]).to(torch.float8_e4m3fn)
    assert bits_equal(dequantize_fp8(w, torch.tensor(0.1)), w.float() * torch.tensor(0.1))


def test_valid_mixed_folder_reads_as_the_bf16_layout(tmp_path: Path) -> None:
    folder = write_quantized(tmp_path / "ok", {EXPERT: "NVFP4", SHARED: "FP8"})
    ckpt = open_checkpoint(folder)
    assert isinstance(ckpt, DequantizedCheckpoint) and "quantization_config" not in ckpt.config
    ckpt.check_quantized()
    ckpt.check_against(ckpt.arch)  # scales and input scales hidden, quantized weights at BF16 shape
    assert ckpt.tensors[f"{EXPERT}.weight"].shape == (64, 64) and ckpt.tensors[f"{EXPERT}.weight"].dtype == "BF16"
    parts = nvfp4_parts(64, 64)
    expected = dequantize_nvfp4(parts["weight"], parts["weight_scale"], parts["weight_scale_2"])
    assert bits_equal(ckpt.dequantize(f"{EXPERT}.weight"), expected)
    assert bits_equal(ckpt.get(f"{EXPERT}.weight"), expected.to(torch.bfloat16))
    assert dict(ckpt.summary.weights) == {"FP8": 1, "NVFP4": 1} and ckpt.summary.activation_scales == 2
    assert "not the BF16 release" in ckpt.summary.render()
    assert open_checkpoint(folder, torch.float32).get(f"{SHARED}.weight").dtype == torch.float32


def test_modelopt_047_sentinels_and_parent_keys_are_understood(tmp_path: Path) -> None:
    experts = {f"backbone.layers.1.mixer.experts.{e}.{p}": "NVFP4" for e in range(8) for p in ("up_proj", "down_proj")}
    folder = write_quantized(tmp_path / "s", experts,
                             listed={"backbone.layers.1.mixer.experts.\u0000backbone.pt_name_sentinel": "NVFP4"})
    assert len(open_checkpoint(folder).quantized) == 16


def test_single_format_checkpoint_with_excluded_modules(tmp_path: Path) -> None:
    folder = write_quantized(tmp_path / "fp8", {SHARED: "FP8", IN_PROJ: "FP8"}, algo="FP8",
                             hq_extra={"exclude_modules": ["lm_head", "backbone.layers.4.mixer.*"]})
    assert len(open_checkpoint(folder).quantized) == 2


@pytest.mark.parametrize("case, needle", [
    ("listed_without_scales", rf"{IN_PROJ}: declared FP8 by .*hf_quant_config.json but has no weight_scale"),
    ("scales_without_weight", rf"{SHARED}: weight_scale present but no {SHARED}.weight"),
    ("unlisted_scales", rf"{SHARED}: weight F8_E4M3\[128, 128\] .* does not list it in quantized_layers"),
    ("packed_declared_fp8", rf"{EXPERT}.weight is U8\[64, 32\], expected F8_E4M3\[64, 32\] for the FP8 format"),
    ("scale_dtype", rf"{EXPERT}.weight_scale is F32\[64, 4\], expected F8_E4M3\[64, 4\]"),
    ("scale_shape", rf"{EXPERT}.weight_scale is F8_E4M3\[64, 2\], expected F8_E4M3\[64, 4\]"),
    ("missing_global_scale", rf"{EXPERT}: declared NVFP4 .* but {EXPERT}.weight_scale_2 is missing"),
    ("listed_absent", r"backbone.layers.9.mixer.in_proj: listed as FP8 in quantized_layers .* no tensor for it"),
])
def test_layout_errors_name_the_module(tmp_path: Path, case: str, needle: str) -> None:
    modules, listed, edit = {EXPERT: "NVFP4", SHARED: "FP8"}, None, None
    if case == "listed_without_scales":
        listed = {**modules, IN_PROJ: "FP8"}
    elif case == "scales_without_weight":
        edit = lambda t: t.pop(f"{SHARED}.weight")  # noqa: E731
    elif case == "unlisted_scales":
        listed = {EXPERT: "NVFP4"}
    elif case == "packed_declared_fp8":  # Megatron-Bridge #3605: an NVFP4 tensor where FP8 was assumed
        listed = {EXPERT: "FP8", SHARED: "FP8"}
    elif case == "scale_dtype":
        edit = lambda t: t.update({f"{EXPERT}.weight_scale": t[f"{EXPERT}.weight_scale"].float()})  # noqa: E731
    elif case == "scale_shape":
        edit = lambda t: t.update(  # noqa: E731
            {f"{EXPERT}.weight_scale": t[f"{EXPERT}.weight_scale"][:, :2].contiguous()})
    elif case == "missing_global_scale":
        edit = lambda t: t.pop(f"{EXPERT}.weight_scale_2")  # noqa: E731
    elif case == "listed_absent":
        listed = {**modules, "backbone.layers.9.mixer.in_proj": "FP8"}
    folder = write_quantized(tmp_path / case, modules, listed=listed, edit=edit)
    with pytest.raises(CheckpointError, match=needle):
        open_checkpoint(folder)


@pytest.mark.parametrize("algo", ["W4A8_AWQ", "INT4_AWQ"])
def test_unknown_quant_algo_is_refused(tmp_path: Path, algo: str) -> None:
    folder = write_quantized(tmp_path / algo, {EXPERT: "NVFP4"}, algo=algo)
    with pytest.raises(CheckpointError, match=rf"hf_quant_config.json: quant_algo='{algo}' is not supported"):
        open_checkpoint(folder)
    folder = write_quantized(tmp_path / f"{algo}-layer", {EXPERT: "NVFP4"},
                             hq_extra={"quantized_layers": {EXPERT: {"quant_algo": algo}}})
    with pytest.raises(CheckpointError, match=rf"quantized_layers\['{EXPERT}'\]: quant_algo='{algo}'"):
        open_checkpoint(folder)


def test_nvfp4_group_size_other_than_16_is_refused(tmp_path: Path) -> None:
    folder = write_quantized(tmp_path / "g32", {EXPERT: "NVFP4"}, algo="NVFP4", hq_extra={"group_size": 32})
    with pytest.raises(CheckpointError, match=r"NVFP4 group_size=32, expected 16"):
        open_checkpoint(folder)
    folder = write_quantized(tmp_path / "g32-layer", {EXPERT: "NVFP4"},
                             hq_extra={"quantized_layers": {EXPERT: {"quant_algo": "NVFP4", "group_size": 32}}})
    with pytest.raises(CheckpointError, match=rf"quantized_layers\['{EXPERT}'\]: NVFP4 group_size=32"):
        open_checkpoint(folder)


def test_excluded_module_with_scales_and_other_methods_are_refused(tmp_path: Path) -> None:
    folder = write_quantized(tmp_path / "ex", {SHARED: "FP8"}, algo="FP8", hq_extra={"exclude_modules": [SHARED]})
    with pytest.raises(CheckpointError, match=rf"{SHARED}: .* excludes it \(expected an unquantized weight\)"):
        open_checkpoint(folder)
    folder = write_quantized(tmp_path / "ct", {SHARED: "FP8"}, qc={"quant_method": "compressed-tensors"})
    with pytest.raises(CheckpointError, match=r"quant_method='compressed-tensors': only NVIDIA ModelOpt"):
        open_checkpoint(folder)
    folder = write_quantized(tmp_path / "disagree", {SHARED: "FP8"}, algo="FP8",
                             qc={"quant_method": "modelopt", "quant_algo": "NVFP4"})
    with pytest.raises(CheckpointError, match=r"config.json says quant_algo='NVFP4', hf_quant_config.json says"):
        open_checkpoint(folder)


def test_plain_reader_still_refuses_quantized_folders(tmp_path: Path) -> None:
    folder = write_quantized(tmp_path / "q", {SHARED: "FP8"})
    with pytest.raises(CheckpointError, match=r"quantization_config \(MIXED_PRECISION\) present.*convert import"):
        HFCheckpoint(folder)
