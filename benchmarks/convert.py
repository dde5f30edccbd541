"""Conversion throughput and peak memory on CPU, against the disk's own bandwidth and the host's loop.

    python benchmarks/convert.py [--work-dir /tmp/n3s-bench] [--experts 8,77] [--hidden 1024] [--shard-gb 0.5]
    python benchmarks/convert.py --real-shapes [--layers 3] [--work-dir /tmp/n3s-real]
    python benchmarks/convert.py --experts 8 --steps ours-import --profile ours-import

Default: two synthetic Super-shaped checkpoints of the same shard size (all 88 layers of the released
pattern, latent MoE, the MTP block, FP32 router biases; hidden 1024; 8 and 77 routed experts -> 1.98 and
7.92 GB BF16: one ~4x the other; ``--hidden 512 --experts 8,88`` -> 0.57 and 2.30 GB is the cheaper pair).
``--real-shapes``: Super's real tensor shapes (hidden 4096, 512 experts of 1024 -> 2688, latent 1024,
Mamba 128 x 64, the MTP block) for the first ``--layers`` layers of the real pattern + MTP (3 layers:
14.2 GB), imported, exported back and audited bit-exact. Checkpoints are written by the script.

First the script measures the filesystem of ``--work-dir``: one large file written (fsync included) and
read back with its pages dropped from the page cache (``posix_fadvise(DONTNEED)``, no root needed). Before
every step its input files are dropped from the cache the same way, so every step reads from the disk.
Each step runs in its own process, so its peak RSS (``ru_maxrss``) is its own:

* ``ours-import``  ``convert import``: HF folder -> Megatron torch_dist checkpoint on disk (end to end)
* ``ours-export``  ``convert export``: checkpoint on disk -> HF folder on disk (end to end), shards of the
  input's largest shard size
* ``host-load``    the host's ``MegatronModelBridge.load_weights_hf_to_megatron`` into an in-memory CPU
  model (allocation excluded; the host's checkpoint save needs a GPU, so its row stops there)
* ``host-export``  the host's ``stream_weights_megatron_to_hf`` (tensors produced in memory, not written)
* ``dequantize-nvfp4``  the dequantizing reader alone: every tensor of the quantized folder read (and
  dequantized) to BF16, nothing converted
* ``ours-import-nvfp4``  ``convert import`` of the same model quantized like the published Super NVFP4
  (MIXED_PRECISION: routed experts NVFP4, shared experts and Mamba in/out projections FP8, the rest BF16;
  random codes with valid scales). GB/s there = quantized input bytes
* ``audit``  the export compared with the input, tensor by tensor, bit for bit (``--real-shapes`` adds it)

The host and NVFP4 steps run on the first checkpoint only (``--comparisons-on``). The ``ours-*`` children
first convert a tiny checkpoint both ways (every code path imported, allocator warmed), then take their
RSS as the fixed part: "growth" is what the conversion itself needed, checked against the bound of
tests/integration/test_conversion_memory.py (2 x the largest shard + 96 MiB). The host's own
NemotronHBridge stops on this model (MTP norm unmapped in the TE-free layout), so its loop is driven by
our SuperBridge table; the run records that. GB/s = input checkpoint bytes / wall seconds; "of disk" =
GB/s over the disk's copy rate 1 / (1/read + 1/write) (each byte is read once and written once).
``--profile STEP,...`` re-runs those steps on the first checkpoint under cProfile (not timed) and prints
the top self-time shares and our own functions' cumulative shares.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_inputs import (bench_arch, copy_rate, disk_bandwidth, drop_cache, real_slice_arch,  # noqa: E402
                            write_synthetic_quantized)

HOST_STEPS = ("host-load", "host-export")
QUANTIZED_STEPS = ("dequantize-nvfp4", "ours-import-nvfp4")  # read the quantized folder
OVERHEAD = 96 * 2**20  # bytes: the fixed part of the memory bound, as in test_conversion_memory.py
TINY_SHARD = 16 * 2**20  # bytes per shard of the warm-up checkpoint
OWN_DIRS = ("experts", "real", "tiny")  # the only folders under --work-dir that cleanup() touches
DEFAULT_STEPS = "ours-import,ours-export,host-load,host-export,dequantize-nvfp4,ours-import-nvfp4"


def step_input(step: str, work: Path) -> Path:
    """The folder a step reads (evicted from the page cache before it runs; its bytes are the GB/s's)."""
    return work / ("megatron" if step == "ours-export" else "hf-nvfp4" if step in QUANTIZED_STEPS else "hf")


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB, whole process lifetime


# --- the child: one step in a fresh process -------------------------------------------------------------

def _ours_import(work: Path, restart: Callable[[], None]) -> None:
    from nemotron3_super.conversion import commands

    commands.import_checkpoint(work / "hf", work / "megatron", overwrite=True)


def _ours_export(work: Path, restart: Callable[[], None]) -> None:
    from nemotron3_super.conversion import commands

    commands.export_checkpoint(work / "hf", work / "megatron", work / "exported", overwrite=True,
                               shard_bytes=max(f.stat().st_size for f in shards(work / "hf")))


def _ours_import_nvfp4(work: Path, restart: Callable[[], None]) -> None:
    from nemotron3_super.conversion import commands

    commands.import_checkpoint(work / "hf-nvfp4", work / "megatron-nvfp4", overwrite=True)


def _dequantize(work: Path, restart: Callable[[], None]) -> None:
    from nemotron3_super.conversion.quantized import open_checkpoint

    src = open_checkpoint(work / "hf-nvfp4")
    for name in sorted(src.tensors, key=lambda n: (src.tensors[n].file.name, n)):
        src.get(name)


def _host(work: Path, restart: Callable[[], None], export: bool) -> None:
    """The host's loop, driven by our table, into (and out of) an in-memory CPU model."""
    import torch
    from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM

    from nemotron3_super.bridge import SuperBridge
    from nemotron3_super.conversion.hf_io import HFCheckpoint
    from nemotron3_super.conversion.megatron_io import build_model
    from nemotron3_super.conversion.process_groups import single_process_group

    with single_process_group():
        model = build_model(HFCheckpoint(work / "hf").arch, torch.bfloat16)
        restart()  # the host's loop only (model allocation excluded)
        pretrained = PreTrainedCausalLM.from_pretrained(str(work / "hf"))
        bridge = SuperBridge()
        bridge.hf_config = pretrained.config
        bridge.load_weights_hf_to_megatron(pretrained, [model])
        if export:
            restart()
            for _ in bridge.stream_weights_megatron_to_hf([model], pretrained, show_progress=False):
                pass  # tensors are produced in memory and dropped


STEP_FUNCTIONS = {
    "ours-import": _ours_import, "ours-export": _ours_export, "ours-import-nvfp4": _ours_import_nvfp4,
    "dequantize-nvfp4": _dequantize,
    "host-load": lambda work, restart: _host(work, restart, export=False),
    "host-export": lambda work, restart: _host(work, restart, export=True),
}


def warm_up(tiny: Path) -> None:
    """Convert the tiny checkpoint both ways: what stays allocated after it is the fixed part."""
    from nemotron3_super.conversion import commands

    commands.import_checkpoint(tiny / "hf", tiny / f"megatron-{os.getpid()}", overwrite=True)
    commands.export_checkpoint(tiny / "hf", tiny / f"megatron-{os.getpid()}", tiny / f"exported-{os.getpid()}",
                               overwrite=True, shard_bytes=TINY_SHARD)
    for name in ("megatron", "exported"):
        shutil.rmtree(tiny / f"{name}-{os.getpid()}")


def top_shares(profile: Any, seconds: float, top: int = 12) -> dict[str, list]:
    """The ``top`` functions by self time, and our own (nemotron3_super) functions by cumulative time,
    each as (seconds, share of the step's wall time, calls, function)."""
    import pstats

    def label(func: tuple) -> str:
        file, line, name = func
        return name if file == "~" else f"{'/'.join(Path(file).parts[-2:])}:{line}({name})"

    stats = pstats.Stats(profile).stats  # {func: (primitive calls, calls, self s, cumulative s, callers)}
    by_self = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    ours = sorted(((f, s) for f, s in stats.items() if "nemotron3_super" in f[0]), key=lambda kv: kv[1][3],
                  reverse=True)[:top]
    return {"self": [(s[2], s[2] / seconds, s[1], label(f)) for f, s in by_self],
            "ours_cumulative": [(s[3], s[3] / seconds, s[1], label(f)) for f, s in ours]}


def child(step: str, work: Path, profile: bool) -> dict:
    """One measurement, in this (fresh) process."""
    import nemotron3_super.conversion  # noqa: F401 - Mamba-1 stand-in before megatron imports

    if step.startswith("ours-"):
        warm_up(work.parent / "tiny")
    drop_cache(step_input(step, work) if step != "audit" else work / "exported")
    base = peak_rss_gib()
    if step == "audit":
        from nemotron3_super.conversion.audit import audit

        report = audit(work / "hf", work / "exported")
        return {"step": step, "ok": report.ok, "text": report.render()}
    clock = {"start": time.perf_counter()}
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    STEP_FUNCTIONS[step](work, lambda: clock.update(start=time.perf_counter()))
    seconds = time.perf_counter() - clock["start"]
    if prof is not None:
        prof.disable()
    result = {"step": step, "seconds": seconds, "peak_rss_gib": peak_rss_gib(), "base_rss_gib": base}
    return result | ({"profile": top_shares(prof, seconds)} if prof is not None else {})


# --- the parent: inputs, one child per step, the table ------------------------------------------------

def host_own_bridge_status(work: Path) -> str:
    """Does the host's own NemotronHBridge load this model? (a one-line outcome)"""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import nemotron3_super.conversion;"
            "from nemotron3_super.bridge import SuperBridge; import torch;"
            "from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge;"
            "from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM;"
            "from nemotron3_super.conversion.hf_io import HFCheckpoint;"
            "from nemotron3_super.conversion.megatron_io import build_model\n"
            "from nemotron3_super.conversion.process_groups import single_process_group\n"
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


def run_step(step: str, work: Path, profile: bool = False) -> dict | None:
    """``step`` in a child process; its result, or None (printed) when it failed."""
    cmd = [sys.executable, __file__, "--child", step, "--work-dir", str(work)] + (["--child-profile"] * profile)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  {step:18s} FAILED: {out.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_inputs(arch: Any, work: Path, shard: int, steps: list[str]) -> None:
    """The BF16 folder (and the NVFP4 one where a step reads it) and the tiny warm-up folder, once."""
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.fixtures import write_synthetic_checkpoint

    todo = [("hf", lambda p: write_synthetic_checkpoint(arch, p, shard_bytes=shard))]
    if any(s in QUANTIZED_STEPS for s in steps):
        todo.append(("hf-nvfp4", lambda p: write_synthetic_quantized(arch, p, shard)))
    for name, write in todo:
        if not (work / name).exists():
            start = time.perf_counter()
            write(work / name)
            print(f"  wrote {work / name} in {time.perf_counter() - start:.0f} s", flush=True)
    if not (work.parent / "tiny" / "hf").exists():
        write_synthetic_checkpoint(tiny_super(), work.parent / "tiny" / "hf", shard_bytes=TINY_SHARD)


def print_row(step: str, r: dict, work: Path, disk: float, load: float) -> None:
    files = shards(work / ("hf-nvfp4" if step in QUANTIZED_STEPS else "hf"))  # export: HF bytes, HF shards
    size, largest = sum(f.stat().st_size for f in files), max(f.stat().st_size for f in files)
    rate = size / 1e9 / r["seconds"]
    line = (f"  {step:18s} {r['seconds']:7.1f} s  {rate:6.3f} GB/s  {rate / disk:5.2f} of disk  "
            f"peak RSS {r['peak_rss_gib']:5.2f} GiB ({r['peak_rss_gib'] * 2**30 / size:.2f}x checkpoint)")
    if step.startswith("ours-"):
        grown, bound = (r["peak_rss_gib"] - r["base_rss_gib"]) * 2**30, 2 * largest + OVERHEAD
        line += (f" = {r['base_rss_gib']:.2f} GiB fixed + {grown / 2**30:.3f} GiB ({grown / largest:.2f}x largest "
                 f"shard; bound 2x + 96 MiB = {bound / 2**30:.2f} GiB: {'within' if grown <= bound else 'OVER'})")
    print(line + f"  (load avg {load:.1f})", flush=True)


def print_profile(step: str, r: dict) -> None:
    profile = r["profile"]
    print(f"  profile of {step} (cProfile, main thread, {r['seconds']:.1f} s under the profiler, load avg "
          f"{os.getloadavg()[0]:.1f}; shares of that wall time):")
    for title, key in (("self time", "self"), ("our functions, cumulative", "ours_cumulative")):
        print(f"    top by {title}:")
        for seconds, share, calls, label in profile[key]:
            print(f"      {seconds:8.1f} s {share * 100:5.1f}%  {calls:9d} calls  {label}")


def bench_checkpoint(arch: Any, work: Path, shard: int, steps: list[str], disk: float,
                     profile: list[str]) -> dict:
    """Write (once) and convert one checkpoint; prints its rows and returns {step: result}."""
    write_inputs(arch, work, shard, steps)
    files = shards(work / "hf")
    size, largest = sum(f.stat().st_size for f in files), max(f.stat().st_size for f in files)
    print(f"checkpoint {work / 'hf'}: {size / 1e9:.2f} GB in {len(files)} shards (largest {largest / 2**30:.2f} "
          f"GiB), {arch.hf_tensor_count():,} tensors, hidden {arch.hidden_size}, pattern "
          f"{arch.hybrid_override_pattern} + MTP {arch.mtp_hybrid_override_pattern}, {arch.n_routed_experts} "
          f"experts", flush=True)
    results: dict[str, Any] = {"size": size, "largest_shard": largest}
    for step in steps:
        load = os.getloadavg()[0]
        r = run_step(step, work)
        if r is None:
            continue
        results[step] = r
        if step == "audit":
            print(f"  audit: {'bit-exact' if r['ok'] else 'DIFFERENT'}\n" + r["text"], flush=True)
        else:
            print_row(step, r, work, disk, load)
    for step in profile:
        r = run_step(step, work, profile=True)
        if r is not None:
            print_profile(step, r)
    return results


def summarize(results: list[dict]) -> None:
    """Peak RSS of the two checkpoints against each other (the acceptance figures) and ours / host."""
    small, large = results[0], results[-1]
    for step in ("ours-import", "ours-export"):
        if len(results) > 1 and step in small and step in large:
            diff = (large[step]["peak_rss_gib"] - small[step]["peak_rss_gib"]) * 2**30
            print(f"{step}: peak RSS {small[step]['peak_rss_gib']:.2f} GiB ({small['size'] / 1e9:.2f} GB) vs "
                  f"{large[step]['peak_rss_gib']:.2f} GiB ({large['size'] / 1e9:.2f} GB): differ by "
                  f"{diff / large['size'] * 100:.1f}% of the larger checkpoint (target < 10%)")
    for ours, host in (("ours-import", "host-load"), ("ours-export", "host-export")):
        if ours in small and host in small:
            print(f"{ours} speed / host loop's ({host}, same checkpoint): "
                  f"{small[host]['seconds'] / small[ours]['seconds']:.2f}x (target >= 2x)")


def cleanup(work: Path, keep: bool) -> None:
    """Outputs always go (they are re-made on every run); the input folders unless ``keep``. Only inside
    this script's own folders (``OWN_DIRS``)."""
    if not work.name.startswith(OWN_DIRS):
        raise ValueError(f"cleanup({work}): not a folder of this benchmark (names start with {OWN_DIRS})")
    for name in ("megatron", "exported", "megatron-nvfp4") + (() if keep else ("hf", "hf-nvfp4")):
        if (work / name).is_dir():
            shutil.rmtree(work / name)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def measure_disk(work_dir: Path, gib: float) -> float:
    """Prints the disk's figures; returns its copy rate in GB/s."""
    write, read = disk_bandwidth(work_dir, int(gib * 2**30))
    rate = copy_rate(write, read)
    print(f"disk ({work_dir}, {gib:g} GiB file): sequential write {write:.3f} GB/s (fsync), read {read:.3f} GB/s "
          f"(cold); copy rate {rate:.3f} GB/s  (load avg {os.getloadavg()[0]:.1f})", flush=True)
    return rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/n3s-bench"))
    parser.add_argument("--experts", default="8,77", help="routed experts per MoE layer, one checkpoint each")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the synthetic checkpoints")
    parser.add_argument("--shard-gb", type=float, default=None,
                        help="HF shard size in GiB, all checkpoints (default 0.5; --real-shapes 2)")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated; see the module docstring")
    parser.add_argument("--comparisons-on", default="first", choices=("first", "all", "none"),
                        help="host-* and *-nvfp4 steps on the first (smallest) checkpoint only, all, or none")
    parser.add_argument("--real-shapes", action="store_true", help="Super's real tensor shapes, --layers + MTP")
    parser.add_argument("--layers", type=int, default=3, help="--real-shapes: first layers of the real pattern")
    parser.add_argument("--profile", default="", help="steps re-run under cProfile on the first checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the input checkpoints (default: deleted)")
    parser.add_argument("--disk-gb", type=float, default=4.0, help="size of the disk-bandwidth file in GiB")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    known = set(STEP_FUNCTIONS) | {"audit"}
    for step in [s for s in args.steps.split(",") + args.profile.split(",") if s]:
        if step not in known:
            parser.error(f"step {step!r}: expected one of {sorted(known)}")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work_dir, args.child_profile)))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {' '.join(sys.argv)}", flush=True)
    disk = measure_disk(args.work_dir, args.disk_gb)
    steps, profile = args.steps.split(","), [s for s in args.profile.split(",") if s]
    if args.real_shapes:
        work = args.work_dir / f"real{args.layers}"
        ours = [s for s in steps if s.startswith("ours-") and s not in QUANTIZED_STEPS]
        try:
            bench_checkpoint(real_slice_arch(args.layers), work, int((args.shard_gb or 2) * 2**30),
                             ours + ["audit"], disk, profile)
        finally:
            for folder in (work, args.work_dir / "tiny"):
                cleanup(folder, args.keep)
        return
    results, experts_list = [], [int(e) for e in args.experts.split(",")]
    works = [args.work_dir / f"experts{e}-hidden{args.hidden}" for e in experts_list]
    try:
        for i, (experts, work) in enumerate(zip(experts_list, works)):
            compare = args.comparisons_on == "all" or (args.comparisons_on == "first" and i == 0)
            mine = [s for s in steps if compare or s not in HOST_STEPS + QUANTIZED_STEPS]
            results.append(bench_checkpoint(bench_arch(experts, args.hidden), work,
                                            int((args.shard_gb or 0.5) * 2**30), mine, disk, profile if i == 0 else []))
            if i:
                cleanup(work, args.keep)
        summarize(results)
        if args.comparisons_on != "none" and any(s in HOST_STEPS for s in steps):
            print(f"host's own NemotronHBridge on this model: {host_own_bridge_status(works[0])}")
    finally:
        for work in works + [args.work_dir / "tiny"]:
            cleanup(work, args.keep)


if __name__ == "__main__":
    main()
