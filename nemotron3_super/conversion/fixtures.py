"""Tiny HF checkpoints that stand for released ones (tests, demo, benchmark).

transformers 5.12 builds and saves the model, then the folder is made to look like a release:
``backbone.embeddings`` (it writes ``embedding``), the MTP block added (it writes no ``mtp.*``; names and
shapes from :meth:`SuperArchitecture.hf_tensors`), router correction biases kept FP32 (it casts them), and
a byte-level tokenizer (``demo_tokenizer``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from nemotron3_super.architecture import SuperArchitecture, nano_30b_a3b, tiny_super
from nemotron3_super.conversion.demo_tokenizer import write_demo_tokenizer
from nemotron3_super.conversion.hf_io import HF_NAME_ALIASES
from nemotron3_super.hf_layout import FP32_HF_SUFFIX


def tiny_nano() -> SuperArchitecture:
    """Nano-shaped (no latent MoE, no MTP) tiny variant: 1 attention, 2 Mamba, 2 MoE layers."""
    return dataclasses.replace(
        nano_30b_a3b(), hidden_size=96, hybrid_override_pattern="ME*EM", vocab_size=192,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, mamba_num_heads=6, mamba_head_dim=16,
        ssm_state_size=16, n_groups=2, n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=48,
        moe_shared_expert_intermediate_size=96, intermediate_size=64)


def tiny_hf_model(arch: SuperArchitecture, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> tuple[Any, dict]:
    """transformers' NemotronH for ``arch`` (random init, non-trivial router correction biases) and the
    biases' FP32 values by state-dict name (the model holds them in ``dtype``)."""
    from transformers import NemotronHConfig, NemotronHForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    name = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}[dtype]
    config = NemotronHConfig(**arch.to_hf_config_dict({"torch_dtype": name}))
    config.architectures = ["NemotronHForCausalLM"]
    model = NemotronHForCausalLM(config)
    with torch.no_grad():  # transformers zero-inits the correction bias; make it non-trivial and FP32-precise
        for n, buf in model.named_buffers():
            if n.endswith(FP32_HF_SUFFIX):
                buf.copy_(torch.randn(buf.shape, generator=torch.Generator().manual_seed(seed)) * 1e-3)
    fp32 = {n: t.detach().clone().float() for n, t in model.state_dict().items() if n.endswith(FP32_HF_SUFFIX)}
    return model.to(dtype), fp32


def release_style(folder: Path, arch: SuperArchitecture, fp32: dict, *, dtype: torch.dtype = torch.bfloat16,
                  seed: int = 0, fp32_router_weight: bool = False) -> None:
    """Rewrite a folder saved by transformers (or ModelOpt) as released: one ``model.safetensors`` with the
    released names, FP32 router biases (``fp32``: the model's values) and the MTP block, which transformers
    does not write (BF16 random; names and shapes from :meth:`SuperArchitecture.hf_tensors`). Other tensors,
    quantized ones included, keep their bytes."""
    from safetensors.torch import load_file, save_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
        file.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    tensors = {HF_NAME_ALIASES.get(n, n): t for n, t in tensors.items()}
    for n in list(tensors):
        if n.endswith(FP32_HF_SUFFIX):  # the FP32 values, not transformers' rounded copy
            tensors[n] = fp32.get("model." + n.removeprefix("backbone."), tensors[n].float())
        if fp32_router_weight and n.endswith("mixer.gate.weight"):
            tensors[n] = (tensors[n].float() + torch.randn(tensors[n].shape) * 1e-6)  # FP32-only bits (as Nano)
    gen = torch.Generator().manual_seed(seed + 1)
    for n, shape in arch.hf_tensors():  # the MTP block transformers does not write
        if n.startswith("mtp."):
            t = torch.randn(shape, generator=gen) * 0.02
            if n.endswith("norm.weight") or n.endswith(("enorm.weight", "hnorm.weight")):
                t = 1 + t
            tensors[n] = t.float() if n.endswith(FP32_HF_SUFFIX) else t.to(dtype)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_dict = arch.to_hf_config_dict(json.loads((folder / "config.json").read_text()))
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


def write_tiny_checkpoint(arch: SuperArchitecture, folder: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                          seed: int = 0, fp32_router_weight: bool = False) -> Path:
    """Build ``arch`` with transformers (random init), save it released-style into ``folder``."""
    folder = Path(folder)
    model, fp32 = tiny_hf_model(arch, dtype, seed)
    model.save_pretrained(folder)
    release_style(folder, arch, fp32, dtype=dtype, seed=seed, fp32_router_weight=fp32_router_weight)
    write_demo_tokenizer(folder, arch.vocab_size)  # the host's tools load one (AutoBridge.import_ckpt)
    return folder


PRESETS = {"tiny_super": tiny_super, "tiny_nano": tiny_nano}


def write_synthetic_checkpoint(arch: SuperArchitecture, folder: str | Path, *, shard_bytes: int,
                               seed: int = 0) -> int:
    """Released-style folder straight from ``arch.hf_tensors()`` (random values, no transformers model in
    memory: any size fits), ``shard_bytes`` per shard; returns the weight bytes. For benchmarks and the
    memory test; :func:`write_tiny_checkpoint` is the transformers-checked fixture."""
    from nemotron3_super.conversion.hf_io import ShardedWriter

    folder = Path(folder)
    folder.mkdir(parents=True)
    writer = ShardedWriter(folder, shard_bytes=shard_bytes)
    gen = torch.Generator().manual_seed(seed)
    for name, shape in arch.hf_tensors():
        t = torch.randn(shape, generator=gen) * 0.02
        writer.add(name, t if name.endswith(FP32_HF_SUFFIX) else t.to(torch.bfloat16))
        del t
    writer.close()
    (folder / "config.json").write_text(json.dumps(arch.to_hf_config_dict({"torch_dtype": "bfloat16"})))
    return writer.total_bytes
