"""Inputs of ``convert.py``: the benchmark architectures, the synthetic NVFP4 checkpoint, and the disk's
own bandwidth on the benchmark's filesystem (with the page cache taken out of the way)."""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import time
from pathlib import Path
from typing import Any

def bench_arch(experts: int, hidden: int = 1024) -> Any:
    """Super's 88-layer pattern, latent MoE and MTP block, narrower: every width scales with ``hidden``
    (1024: heads 8 x 128, Mamba 32 x 64, experts hidden -> hidden, latent hidden / 2)."""
    from nemotron3_super.architecture import super_120b_a12b

    if hidden % 128:
        raise ValueError(f"--hidden {hidden}: expected a multiple of 128 (attention heads of 128)")
    return dataclasses.replace(
        super_120b_a12b(), hidden_size=hidden, vocab_size=32768, num_attention_heads=hidden // 128,
        num_key_value_heads=2, head_dim=128, mamba_num_heads=hidden // 32, mamba_head_dim=64, n_groups=8,
        ssm_state_size=128, n_routed_experts=experts, num_experts_per_tok=min(8, experts), moe_intermediate_size=hidden,
        moe_shared_expert_intermediate_size=2 * hidden, moe_latent_size=hidden // 2)


def real_slice_arch(layers: int = 3) -> Any:
    """Super itself (hidden 4096, 512 experts of 1024 -> 2688, latent 1024, Mamba 128 x 64), the first
    ``layers`` layers of its pattern, with its MTP block."""
    from nemotron3_super.architecture import super_120b_a12b

    real = super_120b_a12b()
    if not 1 <= layers <= len(real.hybrid_override_pattern):
        raise ValueError(f"--layers {layers}: expected 1..{len(real.hybrid_override_pattern)}")
    return dataclasses.replace(real, hybrid_override_pattern=real.hybrid_override_pattern[:layers])


def hf_bytes(arch: Any) -> int:
    """Bytes of ``arch``'s BF16 release (FP32 router biases), from the shapes alone (nothing allocated)."""
    from nemotron3_super.hf_layout import FP32_HF_SUFFIX

    return sum(math.prod(shape) * (4 if name.endswith(FP32_HF_SUFFIX) else 2) for name, shape in arch.hf_tensors())


def _nvfp4_parts(shape: tuple, gen: Any) -> dict:
    import torch

    out, cols = shape
    return {"weight": torch.randint(0, 256, (out, cols // 2), dtype=torch.uint8, generator=gen),
            "weight_scale": (torch.rand(out, cols // 16, generator=gen) + 0.5).to(torch.float8_e4m3fn),
            "weight_scale_2": torch.tensor(1e-3), "input_scale": torch.tensor(1.0)}


def _fp8_parts(shape: tuple, gen: Any) -> dict:
    import torch

    return {"weight": torch.empty(shape).normal_(0, 100, generator=gen).to(torch.float8_e4m3fn),
            "weight_scale": torch.tensor(2e-4), "input_scale": torch.tensor(1.0)}


def _quant_format(name: str) -> str | None:
    """The published Super NVFP4's format of tensor ``name`` (None: kept in BF16)."""
    if name.startswith("mtp.") or not name.endswith(".weight"):
        return None
    if ".experts." in name:
        return "NVFP4"
    if ".shared_experts." in name or name.endswith(("mixer.in_proj.weight", "out_proj.weight")):
        return "FP8"
    return None


def write_synthetic_quantized(arch: Any, folder: Path, shard_bytes: int) -> int:
    """The published Super NVFP4's layout (MIXED_PRECISION: routed experts NVFP4, shared experts and Mamba
    in/out projections FP8, the rest BF16) with random codes and valid scales; returns bytes."""
    import torch

    from nemotron3_super.conversion.hf_io import ShardedWriter
    from nemotron3_super.hf_layout import FP32_HF_SUFFIX

    folder.mkdir(parents=True)
    writer, layers = ShardedWriter(folder, shard_bytes=shard_bytes), {}
    gen = torch.Generator().manual_seed(0)
    for name, shape in arch.hf_tensors():
        fmt = _quant_format(name)
        if fmt is None:
            t = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=gen)
            writer.add(name, t if name.endswith(FP32_HF_SUFFIX) else t.to(torch.bfloat16))
            continue
        module = name.removesuffix(".weight")
        for part, t in (_nvfp4_parts(shape, gen) if fmt == "NVFP4" else _fp8_parts(shape, gen)).items():
            writer.add(f"{module}.{part}", t)
        layers[module] = {"quant_algo": fmt, **({"group_size": 16} if fmt == "NVFP4" else {})}
    writer.close()
    quant = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None, "quantized_layers": layers}
    (folder / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    config = arch.to_hf_config_dict({"torch_dtype": "bfloat16", "quantization_config": {
        "quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "quantized_layers": layers}})
    (folder / "config.json").write_text(json.dumps(config))
    return writer.total_bytes


def drop_cache(path: Path) -> None:
    """Evict a file's (or a folder's files') pages from the page cache (``posix_fadvise(DONTNEED)``, no root
    needed; dirty pages are flushed first), so that the next read comes from the disk."""
    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bandwidth(folder: Path, nbytes: int) -> tuple[float, float]:
    """(sequential write, sequential read) in GB/s of one ``nbytes`` file in ``folder``: the write includes
    its fsync, the read comes after the file's pages are dropped. 64 MiB blocks of random bytes."""
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(os.urandom(len(block)))
    path = folder / "disk-bandwidth.tmp"
    blocks = max(1, nbytes // len(block))
    try:
        start = time.perf_counter()
        with open(path, "wb", buffering=0) as fh:
            for _ in range(blocks):
                fh.write(block)
            os.fsync(fh.fileno())
        write = blocks * len(block) / (time.perf_counter() - start) / 1e9
        drop_cache(path)
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(block):
                pass
        read = blocks * len(block) / (time.perf_counter() - start) / 1e9
    finally:
        path.unlink(missing_ok=True)
    return write, read


def copy_rate(write: float, read: float) -> float:
    """GB/s of a copy that reads every byte once and writes it once: 1 / (1/read + 1/write)."""
    return 1 / (1 / read + 1 / write)
