"""Tiny quantized checkpoints made by NVIDIA ModelOpt itself (tests): FP8, NVFP4 and a Super-like mix.

A tiny transformers NemotronH is quantized with ``mtq.quantize`` (max calibration on one random batch) and
written by ``export_hf_checkpoint``, all on CPU; then made to look like a release as for the BF16 fixtures
(released names, FP32 router biases, the BF16 MTP block ModelOpt leaves out of transformers' model) and
with the sentinel ModelOpt 0.47 + transformers 5.12 append to module names (``".\\x00backbone...``) removed,
as in the published files. Quantized tensors keep ModelOpt's bytes. Needs ``nvidia-modelopt`` (the
``recipes`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.conversion.fixtures import release_style, tiny_hf_model
from nemotron3_super.conversion.quantized import QUANT_CONFIG_FILE

SCHEMES = ("fp8", "nvfp4", "mixed")
_FP8 = {"num_bits": (4, 3), "axis": None}  # per-tensor FP8 E4M3, as ModelOpt's FP8_DEFAULT_CFG


def mixed_config(mtq: Any) -> dict[str, Any]:
    """Like the published Super NVFP4 (MIXED_PRECISION): routed experts NVFP4; shared experts, Mamba in/out
    projections and one layer's fc1 latent projection FP8; layer 3's shared experts NVFP4 (the release's
    AutoQuantize also put NVFP4 on some shared experts); FP8 KV cache; the rest BF16."""
    nvfp4 = next(e["cfg"] for e in mtq.NVFP4_DEFAULT_CFG["quant_cfg"] if e["quantizer_name"] == "*weight_quantizer")
    rules: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for pattern, cfg in (("*mixer.experts*", nvfp4), ("*shared_experts*", _FP8),
                         ("*layers.3.mixer.shared_experts*", nvfp4), ("*mixer.in_proj*", _FP8),
                         ("*mixer.out_proj*", _FP8), ("*layers.1.mixer.fc1_latent_proj*", _FP8)):
        rules += [{"quantizer_name": f"{pattern}weight_quantizer", "cfg": cfg},
                  {"quantizer_name": f"{pattern}input_quantizer", "cfg": cfg}]
    rules.append({"quantizer_name": "*[kv]_bmm_quantizer", "cfg": _FP8})
    return {"quant_cfg": rules, "algorithm": "max"}


def _strip_sentinels(value: Any) -> Any:
    """JSON ``value`` with every module name cut before ModelOpt 0.47's ``\\x00`` sentinel."""
    def clean(text: str) -> str:
        return text.split("\x00", 1)[0].rstrip(".") if "\x00" in text else text

    if isinstance(value, dict):
        return {clean(k): _strip_sentinels(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_sentinels(v) for v in value]
    return clean(value) if isinstance(value, str) else value


def write_modelopt_checkpoint(arch: SuperArchitecture, folder: str | Path, scheme: str, seed: int = 0) -> Path:
    """Quantize a tiny ``arch`` with ModelOpt (``scheme``: fp8, nvfp4 or mixed) and export it into ``folder``."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r}: expected one of {SCHEMES}")
    folder = Path(folder)
    model, fp32 = tiny_hf_model(arch, seed=seed)
    config = {"fp8": mtq.FP8_DEFAULT_CFG, "nvfp4": mtq.NVFP4_DEFAULT_CFG, "mixed": mixed_config(mtq)}[scheme]
    batch = torch.randint(0, arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    model = mtq.quantize(model.eval(), config, lambda m: m(batch))  # max calibration: one forward
    with torch.inference_mode():
        export_hf_checkpoint(model, export_dir=str(folder))
    for name in ("config.json", QUANT_CONFIG_FILE):
        path = folder / name
        path.write_text(json.dumps(_strip_sentinels(json.loads(path.read_text())), indent=2) + "\n")
    release_style(folder, arch, fp32, seed=seed)
    return folder
