"""Conversion throughput and peak memory on CPU, against the disk's own bandwidth and the host's loop.

    python benchmarks/convert.py [--work-dir /tmp/n3s-bench] [--experts 8,77] [--shard-gb 0.5]
    python benchmarks/convert.py --real-shapes [--work-dir /tmp/n3s-real]

Default: two synthetic Super-shaped checkpoints of the same shard size (all 88 layers of the released
pattern, latent MoE, the MTP block, FP32 router biases; hidden 1024; 8 and 77 routed experts -> 1.98 and
7.9 GB BF16: one ~4x the other). ``--real-shapes``: Super's real tensor shapes (hidden 4096, 512 experts of
1024 -> 2688, latent 1024, Mamba 128 x 64, MTP block) for the first 3 layers of the real pattern + MTP
(13.5 GB; ``--layers 1``: 8 GB), exported back and audited bit-exact. Outputs are deleted after use, the
HF checkpoints too unless ``--keep`` (then a rerun reuses them). ``--hidden 512``: a cheaper pair.

In the same run the script measures the filesystem of ``--work-dir``: one large file written (fsync
included) and read back with its pages dropped from the page cache (``posix_fadvise(DONTNEED)``, no root
needed). Before every measured step the step's input files are dropped from the cache the same way, so
every step reads from the disk. Each step runs in its own process (its peak RSS, ``ru_maxrss``, is its own):

* ``ours-import``  ``convert import``: HF folder -> Megatron torch_dist checkpoint on disk (end to end)
* ``ours-export``  ``convert export``: checkpoint on disk -> HF folder on disk (end to end)
* ``host-load``    the host's ``MegatronModelBridge.load_weights_hf_to_megatron`` into an in-memory CPU model
  (the host's checkpoint save needs a GPU, so its row stops there; ours also writes the checkpoint)

The host's own NemotronHBridge stops on this model (MTP norm unmapped in the TE-free layout), so its loop
is driven by our SuperBridge table; the run records that. GB/s = HF checkpoint bytes / wall seconds;
"of disk" = GB/s over the disk's copy rate 1 / (1/read + 1/write) (each byte is read once and written once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_arch(experts: int, hidden: int = 1024):  # noqa: ANN201
    """Super's 88-layer pattern + MTP at ``hidden`` width (latent MoE at half of it)."""
    from nemotron3_super.architecture import super_120b_a12b

    return dataclasses.replace(
        super_120b_a12b(), hidden_size=hidden, vocab_size=32768, num_attention_heads=8, num_key_value_heads=2,
        head_dim=128, mamba_num_heads=hidden // 32, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
        n_routed_experts=experts, num_experts_per_tok=8, moe_intermediate_size=1024,
        moe_shared_expert_intermediate_size=2048, moe_latent_size=hidden // 2)


def real_slice_arch(layers: int = 3):  # noqa: ANN201
    """Super itself, first ``layers`` layers of its pattern, with its MTP block."""
    from nemotron3_super.architecture import super_120b_a12b

    real = super_120b_a12b()
    return dataclasses.replace(real, hybrid_override_pattern=real.hybrid_override_pattern[:layers])


def drop_cache(path: Path) -> None:
    """Evict a file's (or a folder's files') pages from the page cache, so the next read hits the disk."""
    for f in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(f, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bandwidth(folder: Path, nbytes: int) -> tuple[float, float]:
    """(sequential write, sequential read) in GB/s of one ``nbytes`` file in ``folder`` (write includes
    fsync; read after its pages are dropped). 64 MiB blocks of random bytes (nothing compressible)."""
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(os.urandom(len(block)))
    path = folder / "disk-bandwidth.tmp"
    try:
        start = time.perf_counter()
        with open(path, "wb", buffering=0) as fh:
            for _ in range(nbytes // len(block)):
                fh.write(block)
            os.fsync(fh.fileno())
        write = nbytes / (time.perf_counter() - start) / 1e9
        drop_cache(path)
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(block):
                pass
        read = nbytes / (time.perf_counter() - start) / 1e9
    finally:
        path.unlink(missing_ok=True)
    return write, read


def child(step: str, work: Path) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    import nemotron3_super.conversion  # noqa: F401 - Mamba-1 stand-in before megatron imports
    from nemotron3_super.conversion import commands

    hf = work / "hf"
    drop_cache(work / "megatron" if step == "ours-export" else hf)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports done: the fixed part
    start = time.perf_counter()
    if step == "ours-import":
        commands.import_checkpoint(hf, work / "megatron", overwrite=True)
    elif step == "ours-export":
        commands.export_checkpoint(hf, work / "megatron", work / "exported", overwrite=True,
                                   shard_bytes=max(f.stat().st_size for f in hf.glob("*.safetensors")))
    elif step == "audit":
        from nemotron3_super.conversion.audit import audit

        report = audit(hf, work / "exported")
        return {"step": step, "ok": report.ok, "text": report.render()}
    else:
        from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM

        from nemotron3_super.bridge import SuperBridge
        from nemotron3_super.conversion.hf_io import HFCheckpoint
        from nemotron3_super.conversion.megatron_io import build_model, single_process_group

        with single_process_group():
            model = build_model(HFCheckpoint(hf).arch, torch.bfloat16)
            start = time.perf_counter()  # the host's loop only (model allocation excluded)
            pretrained = PreTrainedCausalLM.from_pretrained(str(hf))
            bridge = SuperBridge()
            bridge.hf_config = pretrained.config
            bridge.load_weights_hf_to_megatron(pretrained, [model])
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB, whole process lifetime
    return {"step": step, "seconds": seconds, "peak_rss_gib": peak_kib / 2**20, "base_rss_gib": base_kib / 2**20}


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


def run_step(step: str, work: Path) -> dict | None:
    out = subprocess.run([sys.executable, __file__, "--child", step, "--work-dir", str(work)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  {step:12s} FAILED: {out.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_checkpoint(arch, work: Path, shard: int, steps: list[str], copy_rate: float) -> dict:  # noqa: ANN001
    """Write (once) and convert one checkpoint; prints its rows and returns {step: result}."""
    from nemotron3_super.conversion.fixtures import write_synthetic_checkpoint

    hf = work / "hf"
    if not hf.exists():
        start = time.perf_counter()
        write_synthetic_checkpoint(arch, hf, shard_bytes=shard)
        print(f"  wrote {hf} in {time.perf_counter() - start:.0f} s", flush=True)
    files = list(hf.glob("*.safetensors"))
    size, largest = sum(f.stat().st_size for f in files), max(f.stat().st_size for f in files)
    print(f"checkpoint {hf}: {size / 1e9:.2f} GB in {len(files)} shards (largest {largest / 2**30:.2f} GiB), "
          f"{arch.hf_tensor_count():,} tensors, pattern {arch.hybrid_override_pattern} + MTP "
          f"{arch.mtp_hybrid_override_pattern}, {arch.n_routed_experts} experts", flush=True)
    results = {"size": size, "largest_shard": largest}
    for step in steps:
        load = os.getloadavg()[0]
        r = run_step(step, work)
        if r is None:
            continue
        results[step] = r
        if step == "audit":
            print(f"  audit: {'bit-exact' if r['ok'] else 'DIFFERENT'}\n" + r["text"], flush=True)
            continue
        rate = size / 1e9 / r["seconds"]
        grown = (r["peak_rss_gib"] - r["base_rss_gib"]) * 2**30
        print(f"  {step:12s} {r['seconds']:7.1f} s  {rate:6.3f} GB/s  {rate / copy_rate:5.2f} of disk  "
              f"peak RSS {r['peak_rss_gib']:5.2f} GiB ({r['peak_rss_gib'] * 2**30 / size:.2f}x checkpoint) = "
              f"{r['base_rss_gib']:.2f} GiB after imports + {grown / largest:.2f}x largest shard  "
              f"(load avg {load:.1f})", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/n3s-bench"))
    parser.add_argument("--experts", default="8,77", help="routed experts per MoE layer, one checkpoint each")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (512: 0.84 GB at 8 experts)")
    parser.add_argument("--shard-gb", type=float, default=0.5, help="HF shard size in GiB (all checkpoints)")
    parser.add_argument("--steps", default="ours-import,ours-export,host-load")
    parser.add_argument("--host-on", default="first", choices=("first", "all", "none"),
                        help="host rows on the first (smallest) checkpoint only (its loop holds the model)")
    parser.add_argument("--real-shapes", action="store_true", help="Super's real tensor shapes, --layers + MTP")
    parser.add_argument("--layers", type=int, default=3, help="--real-shapes: first layers of the real pattern")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (default: deleted after use)")
    parser.add_argument("--disk-gb", type=float, default=4.0, help="size of the disk-bandwidth test file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work_dir)))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    write, read = disk_bandwidth(args.work_dir, int(args.disk_gb * 2**30))
    copy_rate = 1 / (1 / read + 1 / write)
    print(f"disk ({args.work_dir}): sequential write {write:.3f} GB/s (fsync), read {read:.3f} GB/s (cold); "
          f"copy rate {copy_rate:.3f} GB/s", flush=True)
    steps = args.steps.split(",")
    if args.real_shapes:
        bench_checkpoint(real_slice_arch(args.layers), args.work_dir / "real", 2 * 2**30,
                         [s for s in steps if not s.startswith("host")] + ["audit"], copy_rate)
        cleanup(args.work_dir / "real", args.keep)
        return
    results, experts_list = [], [int(e) for e in args.experts.split(",")]
    for i, experts in enumerate(experts_list):
        host = args.host_on == "all" or (args.host_on == "first" and i == 0)
        results.append(bench_checkpoint(bench_arch(experts, args.hidden), args.work_dir / f"experts{experts}",
                                        int(args.shard_gb * 2**30),
                                        [s for s in steps if host or not s.startswith("host")], copy_rate))
        if i:
            cleanup(args.work_dir / f"experts{experts}", args.keep)
    summarize(results)
    if args.host_on != "none":
        print(f"host's own NemotronHBridge on this model: "
              f"{host_own_bridge_status(args.work_dir / f'experts{experts_list[0]}')}")
    cleanup(args.work_dir / f"experts{experts_list[0]}", args.keep)


def cleanup(work: Path, keep: bool) -> None:
    """Outputs always go (they are re-made on every run); the HF checkpoint unless ``--keep``."""
    for name in ("megatron", "exported") + (() if keep else ("hf",)):
        if name and (work / name).is_dir() and work.name.startswith(("experts", "real")):  # only ours
            shutil.rmtree(work / name)


def summarize(results: list[dict]) -> None:
    """Peak RSS against the checkpoint size (the acceptance figures) and ours / host."""
    small, large = results[0], results[-1]
    for step in ("ours-import", "ours-export"):
        if step in small and step in large:
            diff = (large[step]["peak_rss_gib"] - small[step]["peak_rss_gib"]) * 2**30
            print(f"{step}: peak RSS {small[step]['peak_rss_gib']:.2f} GiB ({small['size'] / 1e9:.2f} GB) vs "
                  f"{large[step]['peak_rss_gib']:.2f} GiB ({large['size'] / 1e9:.2f} GB): differ by "
                  f"{diff / large['size'] * 100:.1f}% of the larger checkpoint")
    if "ours-import" in small and "host-load" in small:
        print(f"import speed, ours / host loop (same checkpoint): "
              f"{small['host-load']['seconds'] / small['ours-import']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
