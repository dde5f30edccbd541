"""The dry run's per-GPU memory estimate against the peak the host's training loop measures, per configuration.

    python benchmarks/memory_plan.py                                   # CPU: the estimates only
    source .whl/prelude.sh; python3 benchmarks/memory_plan.py --measure --json $OUT/memory_plan.json   # GPU

For each configuration the estimate is what ``python -m nemotron3_super.{pretrain,finetune} --dry-run --gpus 1``
prints for the same overrides (its "total (peak)" row minus the "runtime overhead (assumed)" row, which stands
for the CUDA context and NCCL buffers that ``torch.cuda.max_memory_allocated`` does not see). The measurement is
the ``peak_allocated_mem`` the host's training loop reports after its second iteration (``report_memory``: GB,
converted to GiB here), i.e. with optimizer state allocated. Configurations: Super's real layer shapes in a
7-layer ``MEME*ME`` pretraining run at micro-batch 1 and 2 (16 experts, 32,768-token vocabulary: the GPU
test's debug run) and LoRA on the converted tiny Super (the GPU fine-tuning test's setup).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout (the GPU machine has no install of this package)
GIB, GB = 1024 ** 3, 1e9
PEAK = re.compile(r"peak_allocated_mem:\s*([0-9.eE+-]+)")
ROW = re.compile(r"^(total \(peak\)|runtime overhead \(assumed\))\s+([0-9.]+)", re.M)
DEBUG = ["model.hybrid_override_pattern=MEME*ME", "model.num_layers=7", "model.num_moe_experts=16",
         "model.moe_router_topk=4", "model.vocab_size=32768", "tokenizer.vocab_size=32768",
         "model.pipeline_model_parallel_size=1", "model.expert_model_parallel_size=1",
         "model.tensor_model_parallel_size=1", "model.sequence_parallel=False",
         "model.use_mamba_mem_eff_path=False", "model.seq_length=1024", "dataset.seq_length=1024",
         "train.train_iters=3", "train.global_batch_size=4", "logger.log_interval=1",
         "checkpoint.save=null", "checkpoint.async_save=False"]


def configurations(lora_base: dict[str, Path] | None) -> list[tuple[str, str, list[str]]]:
    """(name, launch module, arguments) of every configuration compared."""
    out = [(f"pretrain 7-layer real shapes, mbs {mbs}", "nemotron3_super.pretrain",
            [*DEBUG, f"train.micro_batch_size={mbs}"]) for mbs in (1, 2)]
    if lora_base is not None:
        out.append(("LoRA tiny Super, mbs 2, seq 64", "nemotron3_super.finetune", [
            "--peft", "lora", "--squad-jsonl", str(lora_base["squad"]), "--tokenizer", str(lora_base["hf"]),
            f"checkpoint.pretrained_checkpoint={lora_base['megatron']}", "model.tensor_model_parallel_size=1",
            "model.expert_model_parallel_size=1", "model.sequence_parallel=False",
            "model.use_mamba_mem_eff_path=False", "model.seq_length=64", "dataset.seq_length=64",
            "dataset.enable_offline_packing=False", "dataset.offline_packing_specs=null", "train.train_iters=3",
            "train.global_batch_size=8", "train.micro_batch_size=2", "scheduler.lr_warmup_iters=1",
            "validation.eval_interval=100", "validation.eval_iters=2", "logger.log_interval=1",
            "checkpoint.save=null", "checkpoint.async_save=False"]))
    return out


def estimate_gib(module: str, args: list[str]) -> tuple[float, str]:
    """(estimate without the assumed runtime overhead, in GiB; the dry run's text)."""
    cmd = [sys.executable, "-m", module, "--dry-run", "--gpus", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"dry run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    rows = {name: float(value) for name, value in ROW.findall(proc.stdout)}
    return rows["total (peak)"] - rows["runtime overhead (assumed)"], proc.stdout


def measure_gib(workdir: Path, module: str, args: list[str], name: str) -> float:
    """Peak allocated GiB after the second iteration of a real (one-GPU) run."""
    sys.path.insert(0, str(ROOT / "tests" / "gpu"))
    from gpu_launch import run_training

    _, log = run_training(workdir, module, args, log_name=re.sub(r"\W+", "_", name))
    peaks = [float(x) for x in PEAK.findall(log)]
    if not peaks:
        raise RuntimeError(f"{name}: no 'peak_allocated_mem' in the training log:\n{log[-3000:]}")
    return max(peaks) * GB / GIB


def lora_base(root: Path) -> dict[str, Path]:
    """The GPU fine-tuning test's setup: tiny Super HF checkpoint + word tokenizer + SQuAD rows, imported."""
    sys.path.insert(0, str(ROOT / "tests" / "gpu"))
    from test_finetune import _squad_rows, _write_word_tokenizer

    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    hf = write_tiny_checkpoint(tiny_super(), root / "hf")
    rows = _squad_rows()
    (root / "squad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_word_tokenizer(hf, [f"Context: {r['context']} Question: {r['question']} Answer: "
                               f"{r['answers']['text'][0]}" for r in rows], tiny_super().vocab_size)
    import_checkpoint(hf, root / "megatron")
    return {"hf": hf, "squad": root / "squad.jsonl", "megatron": root / "megatron"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="also train each configuration (needs a GPU)")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA configuration")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="n3s-memory-plan-") as tmp:
        base = None if args.no_lora else lora_base(Path(tmp))
        for name, module, run_args in configurations(base):
            estimate, _ = estimate_gib(module, run_args)
            measured = measure_gib(Path(tmp), module, run_args, name) if args.measure else None
            rows.append({"config": name, "estimate_gib": round(estimate, 3),
                         "measured_gib": None if measured is None else round(measured, 3),
                         "ratio": None if measured is None else round(estimate / measured, 3)})
    width = max(len(r["config"]) for r in rows) + 2
    print(f"{'configuration':<{width}}{'estimate GiB':>14}{'measured GiB':>14}{'est/meas':>10}")
    for r in rows:
        meas = "-" if r["measured_gib"] is None else f"{r['measured_gib']:.2f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['config']:<{width}}{r['estimate_gib']:>14.2f}{meas:>14}{ratio:>10}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
