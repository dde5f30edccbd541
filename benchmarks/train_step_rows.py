"""One benchmark row of train_step.py: build a model on one Mamba path, time it (alone, or paired with the
host's model at the same shape); a failing row is recorded, not raised."""

from __future__ import annotations

import argparse
import contextlib
import traceback
from dataclasses import dataclass
from typing import Any, Iterator

from host_probe import HostPlan, host_provider
from step_timing import (make_adamw, paired_summary, profile_step, random_batch, time_interleaved, time_steps,
                         training_step)
from train_step_models import Run, error_record, free_cuda, ours_provider, provide, shape_summary

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.conversion.process_groups import cpu_current_device
from nemotron3_super.flops import forward_flops_per_token, model_flops_per_token
from nemotron3_super.mamba_path import mamba_kernels


@dataclass(frozen=True)
class RowPlan:
    impl: str  # "ours" | "host"
    shape: str  # "full" | "host-buildable"
    arch: SuperArchitecture
    experts: str | None = None  # ours: "grouped" | "sequential" (--expert-impl); host: its SequentialMLP


EXPERT_IMPLS = {"grouped": ["grouped"], "sequential": ["sequential"], "both": ["grouped", "sequential"]}


# --mamba-path values: what megatron-core's MambaMixer runs per Mamba layer
MAMBA_PATHS = {
    "fallback": "use_mamba_mem_eff_path=False, conv forced to nn.Conv1d (runs without causal-conv1d)",
    "split": "use_mamba_mem_eff_path=False with causal-conv1d's CUDA conv (needs causal-conv1d)",
    "mem_eff": "use_mamba_mem_eff_path=True: conv, SSD scan, gating and out-norm fused (needs causal-conv1d)",
}
PATH_SETS = {"both": ["fallback", "mem_eff"], "all": ["fallback", "split", "mem_eff"]}


@contextlib.contextmanager
def mamba_path_kernels(path: str) -> Iterator[None]:
    """``fallback`` hides causal-conv1d from the mixer (it reads the module global at every forward), so the
    row runs ``nn.Conv1d`` whether or not causal-conv1d is installed; ``split`` requires it."""
    from megatron.core.ssm import mamba_mixer

    saved = mamba_mixer.causal_conv1d_fn
    if path == "split" and saved is None:
        raise RuntimeError("--mamba-path split needs causal-conv1d, which megatron-core's mamba_mixer did not import")
    if path == "fallback":
        mamba_mixer.causal_conv1d_fn = None
    try:
        yield
    finally:
        mamba_mixer.causal_conv1d_fn = saved


def build_row(row: RowPlan, run: Run, host: HostPlan | None, mem_eff: bool, init: bool = True) -> tuple[Any, Any]:
    """(provider, model) for one row; ``init=False`` leaves the weights uninitialised (build-only)."""
    if row.impl == "ours":
        provider = ours_provider(row.arch, run, mem_eff, init, row.experts or "grouped")
    else:
        provider, _ = host_provider(row.arch, run, host.variant, mem_eff, init)
    return provider, provide(provider, run)


def run_row(row: RowPlan, path: str, run: Run, host: HostPlan | None, args: argparse.Namespace) -> dict[str, Any]:
    """Build, time and (optionally) profile one row; a failure is recorded, not raised."""
    mem_eff = path == "mem_eff"
    depths = run.mtp_depths if row.arch.mtp_hybrid_override_pattern else 0
    out: dict[str, Any] = {"impl": row.impl, "experts": row.experts, "shape": row.shape, "mamba_path": path,
                           "shape_config": shape_summary(row.arch, run.mtp_depths),
                           "flops_per_token": model_flops_per_token(row.arch, args.seq, depths),
                           "forward_flops_per_token": forward_flops_per_token(row.arch, args.seq, depths)}
    model = optimizer = step = None
    stack = contextlib.ExitStack()
    try:
        free_cuda()
        stack.enter_context(mamba_path_kernels(path))
        stack.enter_context(cpu_current_device())  # CPU smoke: megatron's cuda.current_device() buffers
        _, model = build_row(row, run, host, mem_eff)
        out["mamba_kernels"] = (mamba_kernels(mem_eff) if "M" in row.arch.hybrid_override_pattern
                                else "no Mamba layers")
        out["params"] = sum(p.numel() for p in model.parameters())
        optimizer = make_adamw(model.parameters(), args.lr)
        out["optimizer"] = f"torch.optim.AdamW(fused={optimizer.defaults.get('fused')})"
        batch = random_batch(row.arch.vocab_size, args.micro_batch, args.seq, run.seed, run.device)
        step = training_step(model, optimizer, batch)
        out.update(time_steps(step, args.steps, args.warmup, cuda=run.cuda))
        tokens_per_s = args.micro_batch * args.seq / (out["step_ms_median"] / 1e3)
        out.update(tokens_per_s=tokens_per_s, tflops=out["flops_per_token"] * tokens_per_s / 1e12)
        if args.profile and run.cuda and row.impl == "ours" and row.shape == "full":
            out["profile"] = profile_step(step)
    except Exception as exc:  # noqa: BLE001 - one failing row (OOM, kernel error) must not hide the others
        out.update(**error_record(exc), trace=traceback.format_exc(limit=-6))
    finally:
        stack.close()
        del model, optimizer, step
        free_cuda()
    return out


def run_paired(host_row: RowPlan, ours_row: RowPlan, path: str, run: Run, host: HostPlan,
               args: argparse.Namespace) -> dict[str, Any]:
    """Both same-shape models in memory at once, timed in interleaved rounds (see ``paired_summary``)."""

    def measure() -> dict[str, Any]:  # every model reference dies with this frame, before free_cuda()
        batch = random_batch(host_row.arch.vocab_size, args.micro_batch, args.seq, run.seed, run.device)
        steps = {}
        for row in (host_row, ours_row):
            _, model = build_row(row, run, host, path == "mem_eff")
            steps[row.impl] = training_step(model, make_adamw(model.parameters(), args.lr), batch)
        times = time_interleaved(steps, args.steps, args.warmup, run.cuda)
        return paired_summary(times["host"], times["ours"])

    free_cuda()
    try:
        with mamba_path_kernels(path), cpu_current_device():
            return measure()
    except Exception as exc:  # noqa: BLE001 - e.g. both models do not fit: the sequential rows still stand
        return {**error_record(exc), "trace": traceback.format_exc(limit=-6)}
    finally:
        free_cuda()
