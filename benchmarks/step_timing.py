"""The timing loop of train_step.py: one training step (forward, backward, AdamW), timed alone or with
another model's step in interleaved rounds, and optionally profiled."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

TOP_KERNELS = 15


def make_adamw(params: Any, lr: float) -> Any:
    """torch's AdamW, fused when this torch/device supports it (same choice for both models)."""
    import torch

    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def random_batch(vocab: int, micro_batch: int, seq: int, seed: int, device: str) -> tuple[Any, Any, Any, Any]:
    """One fixed batch of random tokens; labels are the next tokens. The attention mask is None (megatron
    makes the causal one) except on CPU, where megatron-core would make it on "cuda": there it is explicit
    (True = masked, [1, 1, s, s])."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (micro_batch, seq + 1), generator=gen).to(device)
    positions = torch.arange(seq, device=device).expand(micro_batch, seq)
    mask = None if device == "cuda" else torch.ones(1, 1, seq, seq, dtype=torch.bool).triu(diagonal=1)
    return tokens[:, :-1].contiguous(), positions, tokens[:, 1:].contiguous(), mask


def training_step(model: Any, optimizer: Any, batch: tuple[Any, Any, Any]) -> Callable[[], Any]:
    """forward (per-token loss; MoE aux and MTP losses join in backward) + backward + optimizer step."""
    tokens, positions, labels, mask = batch

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = model(tokens, positions, mask, labels=labels).float().mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def time_steps(step: Callable[[], Any], steps: int, warmup: int, cuda: bool) -> dict[str, Any]:
    """Per-step milliseconds (CUDA events on GPU; wall clock on CPU, for smoke tests only) and peak memory
    over the timed steps (GPU)."""
    import torch

    for _ in range(warmup):  # kernels compiled / autotuned, optimizer state allocated
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses = []
    times = time_interleaved({"step": lambda: losses.append(step())}, steps, warmup=0, cuda=cuda)["step"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    values = [float(x) for x in losses]
    return {"step_ms": times, "step_ms_median": statistics.median(times), "peak_gib": peak,
            "loss_first": values[0], "loss_last": values[-1],
            "loss_finite": all(math.isfinite(v) for v in values)}


def paired_summary(host_ms: list[float], ours_ms: list[float]) -> dict[str, Any]:
    """Interleaved rounds: each round times one host step and one of ours back to back, so load that drifts
    over seconds (a shared host's CPUs; the steps are launch-bound) hits both alike. The per-round ratio
    host_ms / ours_ms (> 1: ours faster) and its median are robust to that drift; a ratio of two medians
    taken a minute apart is not."""
    if len(host_ms) != len(ours_ms) or not host_ms:
        raise ValueError(f"paired timing needs equally many host and ours steps, got {len(host_ms)} and {len(ours_ms)}")
    ratios = sorted(h / o for h, o in zip(host_ms, ours_ms, strict=True))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"rounds": len(ratios), "host_ms_median": statistics.median(host_ms),
            "ours_ms_median": statistics.median(ours_ms), "ratio_median": statistics.median(ratios),
            "ratio_q1": quartiles[0], "ratio_q3": quartiles[2],
            "rounds_ours_faster": sum(r > 1 for r in ratios), "host_ms": host_ms, "ours_ms": ours_ms}


def time_interleaved(steps: dict[str, Callable[[], Any]], rounds: int, warmup: int,
                     cuda: bool = True) -> dict[str, list[float]]:
    """Milliseconds per step for each model (CUDA events; wall clock on CPU, smoke tests only), alternating
    the order every round (ABBA) so neither model always runs first."""
    import torch

    for _ in range(warmup):
        for step in steps.values():
            step()
    if cuda:
        torch.cuda.synchronize()
    names = list(steps)
    marks: dict[str, list[tuple[Any, Any]]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                steps[name]()
                end.record()
            else:
                start = time.perf_counter()
                steps[name]()
                end = time.perf_counter()
            marks[name].append((start, end))
    if cuda:
        torch.cuda.synchronize()
        return {n: [s.elapsed_time(e) for s, e in m] for n, m in marks.items()}
    return {n: [(e - s) * 1e3 for s, e in m] for n, m in marks.items()}


def profile_step(step: Callable[[], Any], top: int = TOP_KERNELS) -> dict[str, Any]:
    """One more step under torch.profiler (CUDA activity): the ``top`` kernels by total GPU time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
    step_ms = start.elapsed_time(end)
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    total_ms = sum(e.device_time_total for e in kernels) / 1e3
    rows = [{"kernel": e.key[:60], "calls": e.count, "ms": e.device_time_total / 1e3,
             "pct_of_step": 100 * e.device_time_total / 1e3 / step_ms} for e in kernels[:top]]
    return {"step_ms": step_ms, "kernel_ms_total": total_ms, "top": rows}
