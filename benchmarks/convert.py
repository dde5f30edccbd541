"""Conversion throughput and peak memory on CPU: ours vs the host's conversion loop, same checkpoint, same run.

    /tmp/v312/bin/python benchmarks/convert.py [--work-dir /tmp/n3s-bench] [--experts 36]

A synthetic Super-shaped checkpoint (all 88 layers of the released pattern, latent MoE, the MTP block,
FP32 router biases; narrower than Super: hidden 1024, 36 experts -> 4.39 GB BF16) is written once, then
each measurement runs in its own process so its peak RSS (ru_maxrss) is its own:

* ``ours-import``  ``convert import``: HF folder -> Megatron torch_dist checkpoint on disk (end to end)
* ``ours-export``  ``convert export``: checkpoint on disk -> HF folder on disk (end to end)
* ``host-load``    the host's ``MegatronModelBridge.load_weights_hf_to_megatron`` into the same CPU model
* ``host-export``  the host's ``stream_weights_megatron_to_hf`` (tensors produced in memory, not written)
* ``dequantize-nvfp4``  the dequantizing reader alone: every tensor of the quantized folder read (and
  dequantized) to BF16, nothing converted
* ``ours-import-nvfp4``  ``convert import`` of the same model quantized like the published Super NVFP4
  (MIXED_PRECISION: routed experts NVFP4, shared experts and Mamba in/out projections FP8, the rest BF16;
  random codes with valid scales), written once beside the BF16 folder. GB/s there = quantized input bytes

The host's loop is driven by our SuperBridge table: the host's own NemotronHBridge stops on this model
(its MTP attention norm has no mapping in the TE-free layout: "'NoneType' object has no attribute
'megatron_module'"), which the run records. The host's checkpoint save needs a GPU, so the host rows
stop at the in-memory model. GB/s = HF checkpoint bytes / wall seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_arch(experts: int):  # noqa: ANN201
    from nemotron3_super.architecture import super_120b_a12b

    return dataclasses.replace(
        super_120b_a12b(), hidden_size=1024, vocab_size=32768, num_attention_heads=8, num_key_value_heads=2,
        head_dim=128, mamba_num_heads=32, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
        n_routed_experts=experts, num_experts_per_tok=8, moe_intermediate_size=1024,
        moe_shared_expert_intermediate_size=2048, moe_latent_size=512)


def write_synthetic(arch, folder: Path) -> int:  # noqa: ANN001
    """Released-style folder from ``hf_tensors()`` with random values, 2 GiB shards; returns bytes."""
    import torch

    from nemotron3_super.conversion.hf_io import FP32_SUFFIX, ShardedWriter

    folder.mkdir(parents=True)
    writer = ShardedWriter(folder, shard_bytes=2 * 2**30)
    gen = torch.Generator().manual_seed(0)
    for name, shape in arch.hf_tensors():
        t = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=gen)
        writer.add(name, t if name.endswith(FP32_SUFFIX) else t.to(torch.bfloat16))
    writer.close()
    (folder / "config.json").write_text(json.dumps(arch.to_hf_config_dict({"torch_dtype": "bfloat16"})))
    return writer.total_bytes


def _nvfp4_parts(shape: tuple, gen) -> dict:  # noqa: ANN001
    import torch

    out, cols = shape
    return {"weight": torch.randint(0, 256, (out, cols // 2), dtype=torch.uint8, generator=gen),
            "weight_scale": (torch.rand(out, cols // 16, generator=gen) + 0.5).to(torch.float8_e4m3fn),
            "weight_scale_2": torch.tensor(1e-3), "input_scale": torch.tensor(1.0)}


def _fp8_parts(shape: tuple, gen) -> dict:  # noqa: ANN001
    import torch

    return {"weight": torch.empty(shape).normal_(0, 100, generator=gen).to(torch.float8_e4m3fn),
            "weight_scale": torch.tensor(2e-4), "input_scale": torch.tensor(1.0)}


def write_synthetic_quantized(arch, folder: Path) -> int:  # noqa: ANN001
    """The published Super NVFP4's layout (MIXED_PRECISION, see the module docstring) with random codes and
    valid scales, 2 GiB shards; returns bytes."""
    import torch

    from nemotron3_super.conversion.hf_io import FP32_SUFFIX, ShardedWriter

    folder.mkdir(parents=True)
    writer, layers = ShardedWriter(folder, shard_bytes=2 * 2**30), {}
    gen = torch.Generator().manual_seed(0)
    for name, shape in arch.hf_tensors():
        module = name.removesuffix(".weight")
        fmt = None if name.startswith("mtp.") or not name.endswith(".weight") else "NVFP4" if ".experts." in name \
            else "FP8" if ".shared_experts." in name or name.endswith(("mixer.in_proj.weight", "out_proj.weight")) \
            else None
        if fmt is None:
            t = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=gen)
            writer.add(name, t if name.endswith(FP32_SUFFIX) else t.to(torch.bfloat16))
            continue
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


QUANTIZED_STEPS = ("dequantize-nvfp4", "ours-import-nvfp4")  # read the quantized folder


def child(step: str, work: Path) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    import nemotron3_super.conversion  # noqa: F401 - Mamba-1 stand-in before megatron imports
    from nemotron3_super.conversion import commands

    hf, start = work / "hf", time.perf_counter()
    if step == "ours-import":
        commands.import_checkpoint(hf, work / "megatron", overwrite=True)
    elif step == "ours-import-nvfp4":
        commands.import_checkpoint(work / "hf-nvfp4", work / "megatron-nvfp4", overwrite=True)
    elif step == "dequantize-nvfp4":
        from nemotron3_super.conversion.quantized import open_checkpoint

        src = open_checkpoint(work / "hf-nvfp4")
        for name in sorted(src.tensors, key=lambda n: (src.tensors[n].file.name, n)):
            src.get(name)
    elif step == "ours-export":
        commands.export_checkpoint(hf, work / "megatron", work / "exported", overwrite=True)
    else:
        from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM

        from nemotron3_super.bridge import SuperBridge
        from nemotron3_super.conversion.hf_io import HFCheckpoint
        from nemotron3_super.conversion.megatron_io import build_model, single_process_group

        with single_process_group():
            model = build_model(HFCheckpoint(hf).arch, torch.bfloat16)
            pretrained = PreTrainedCausalLM.from_pretrained(str(hf))
            bridge = SuperBridge()
            bridge.hf_config = pretrained.config
            if step == "host-export":
                bridge.load_weights_hf_to_megatron(pretrained, [model])
                start = time.perf_counter()
                for _ in bridge.stream_weights_megatron_to_hf([model], pretrained, show_progress=False):
                    pass  # tensors are produced in memory and dropped
            else:
                bridge.load_weights_hf_to_megatron(pretrained, [model])
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB, whole process lifetime
    return {"step": step, "seconds": seconds, "peak_rss_gib": peak_kib / 2**20}


def host_own_bridge_status(work: Path) -> str:
    """Does the host's own NemotronHBridge load this model? (a one-line outcome)"""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import nemotron3_super.conversion;"
            "from nemotron3_super.bridge import SuperBridge; import torch;"
            "from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge;"
            "from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM;"
            "from nemotron3_super.conversion.hf_io import HFCheckpoint;"
            "from nemotron3_super.conversion.megatron_io import build_model, single_process_group\n"
            "with single_process_group():\n"
            f"    m = build_model(HFCheckpoint({str(work / 'hf')!r}).arch, torch.bfloat16)\n"
            f"    p = PreTrainedCausalLM.from_pretrained({str(work / 'hf')!r})\n"
            "    b = NemotronHBridge(); b.hf_config = p.config\n"
            "    b.load_weights_hf_to_megatron(p, [m])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode == 0:
        return "loads"
    lines = [ln for ln in result.stderr.splitlines() if "Error" in ln]
    return "fails: " + (lines[-1].split("]: ")[-1].strip() if lines else f"exit {result.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/n3s-bench"))
    parser.add_argument("--experts", type=int, default=36, help="routed experts per MoE layer (36: 4.39 GB)")
    parser.add_argument("--steps", default="ours-import,ours-export,host-load,host-export,dequantize-nvfp4,"
                        "ours-import-nvfp4")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work_dir)))
        return
    arch, hf = bench_arch(args.experts), args.work_dir / "hf"
    if not hf.exists():
        start = time.perf_counter()
        size = write_synthetic(arch, hf)
        print(f"synthetic checkpoint: {arch.hf_tensor_count():,} tensors, {size / 1e9:.2f} GB in "
              f"{time.perf_counter() - start:.0f} s -> {hf}")
    quantized = args.work_dir / "hf-nvfp4"
    if any(s in QUANTIZED_STEPS for s in args.steps.split(",")) and not quantized.exists():
        start = time.perf_counter()
        qsize = write_synthetic_quantized(arch, quantized)
        print(f"synthetic NVFP4 (MIXED_PRECISION) checkpoint: {qsize / 1e9:.2f} GB in "
              f"{time.perf_counter() - start:.0f} s -> {quantized}")
    size = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    print(f"checkpoint {hf}: {size / 1e9:.2f} GB, pattern {len(arch.hybrid_override_pattern)} layers, "
          f"MTP {arch.mtp_hybrid_override_pattern}, {args.experts} experts")
    bf16_size = size
    for step in args.steps.split(","):
        size = sum(f.stat().st_size for f in quantized.glob("*.safetensors")) if step in QUANTIZED_STEPS else bf16_size
        out = subprocess.run([sys.executable, __file__, "--child", step, "--work-dir", str(args.work_dir)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{step:18s} FAILED: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{step:18s} {r['seconds']:7.1f} s  {size / 1e9 / r['seconds']:6.3f} GB/s  "
              f"peak RSS {r['peak_rss_gib']:5.2f} GiB ({r['peak_rss_gib'] * 2**30 / size:.2f}x checkpoint)")
    if any(s.startswith("host-") for s in args.steps.split(",")):
        print(f"host's own NemotronHBridge on this model: {host_own_bridge_status(args.work_dir)}")


if __name__ == "__main__":
    main()
