"""Parallel layout of a run and the checks megatron-core would otherwise fail on after start-up.

Stdlib only (no torch, no megatron): dry runs, tests and login nodes can check a layout in
milliseconds, and every failure names the fields to change instead of surfacing as a collective
hang or an assertion deep inside ``initialize_model_parallel``.

How EP composes with DP in megatron-core 0.19 (``parallel_state.initialize_model_parallel``):

* dense layers:  world = TP x PP x CP x DP                          (DP = world / (TP*PP*CP))
* expert layers: world = ETP x EP x EDP x PP  (no CP axis; ETP defaults to TP)
  Both grids cover the same ranks with PP outermost, so the experts' EP x ETP x EDP re-partitions
  the dense grid's TP x CP x DP ranks: EP does not multiply the GPU count, it divides the
  data-parallel ranks. The rule is ``(TP * CP * DP) % (ETP * EP) == 0`` (equivalently
  ``world % (ETP * EP * PP) == 0``), and EDP = TP*CP*DP / (ETP*EP) replicas of each expert
  shard its optimizer state (the distributed optimizer shards dense state over DP*CP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemotron3_super.architecture import SuperArchitecture


class LayoutError(ValueError):
    """The run cannot start as configured; ``problems`` lists every reason (one line each)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("the run cannot start as configured:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class Layout:
    """How a run is split over GPUs. Sizes are megatron-core's; ``etp=None`` means "= tp"."""

    gpus: int  # world size (torchrun nodes x nproc-per-node)
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int | None = 1
    sp: bool = False  # sequence parallel (TP-sharded activations outside the GEMMs)
    seq_length: int = 4096  # tokens per sample
    mbs: int = 1  # micro batch, samples per GPU per forward
    gbs: int = 1  # global batch, samples per optimizer step

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def dp(self) -> int:
        """Data-parallel size (world / (TP*PP*CP)); meaningful once :func:`check_layout` passed."""
        return self.gpus // (self.tp * self.pp * self.cp)

    @property
    def edp(self) -> int:
        """Expert data-parallel size: replicas of each expert shard (world / (ETP*EP*PP))."""
        return self.gpus // (self.expert_tp * self.ep * self.pp)

    @property
    def grad_accum(self) -> int:
        """Micro batches per optimizer step on each data-parallel rank."""
        return self.gbs // (self.mbs * self.dp)

    def describe(self) -> str:
        """Human summary with the batch arithmetic spelled out."""
        return (f"{self.gpus} GPUs = TP{self.tp} x PP{self.pp} x CP{self.cp} x DP{self.dp}; "
                f"experts EP{self.ep} x ETP{self.expert_tp} x EDP{self.edp}; "
                f"SP {'on' if self.sp else 'off'}; seq {self.seq_length}; "
                f"GBS {self.gbs} = MBS {self.mbs} x DP {self.dp} x GA {self.grad_accum}")


# Recipe defaults. EP never multiplies the GPU count: it re-partitions DP (see the module docstring).
# FACTS: Megatron-Bridge pretrains Super on 64 H100s at TP1/PP2/EP32, seq 4096, GBS 1280.
# 64 GPUs = TP1 x PP2 x DP32; experts EP32 x EDP1; GBS 1280 = MBS 1 x DP 32 x GA 40.
PRETRAIN_LAYOUT = Layout(gpus=64, tp=1, pp=2, ep=32, seq_length=4096, mbs=1, gbs=1280)
# FACTS: full SFT at TP8/EP16 (SP on: EP with TP needs it). The GPU count is ours: at 16 or 32 GPUs
# the expert optimizer state (EDP 1 or 2) does not fit 80 GiB (`--dry-run --gpus 32`); 64 fits.
# 64 GPUs = TP8 x DP8; experts EP16 x EDP4; GBS 128 = MBS 1 x DP 8 x GA 16 (packed 2048-token rows).
SFT_LAYOUT = Layout(gpus=64, tp=8, ep=16, sp=True, seq_length=2048, mbs=1, gbs=128)
# LoRA freezes the base (bf16 weights only), so one 8-GPU node holds it: TP8 x DP1, EP8 x EDP1.
# GBS 32 = MBS 1 x DP 1 x GA 32.
LORA_LAYOUT = Layout(gpus=8, tp=8, ep=8, sp=True, seq_length=2048, mbs=1, gbs=32)


def layout_of(cfg: Any, gpus: int) -> Layout:
    """The layout a ConfigContainer (after overrides) asks for on ``gpus`` GPUs."""
    m, t = cfg.model, cfg.train
    return Layout(gpus=gpus, tp=m.tensor_model_parallel_size, pp=m.pipeline_model_parallel_size,
                  cp=m.context_parallel_size, ep=m.expert_model_parallel_size,
                  etp=m.expert_tensor_parallel_size, sp=bool(m.sequence_parallel), seq_length=m.seq_length,
                  mbs=t.micro_batch_size, gbs=t.global_batch_size)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pipeline_problem(pattern: str, pp: int) -> str | None:
    """megatron-core's hybrid layer split: '|' segments per stage, else an even split."""
    main = pattern.split("/")[0]
    segments = main.split("|")
    if len(segments) > 1:
        if len(segments) % pp:
            return (f"hybrid pattern has {len(segments)} '|' pipeline segments, not a multiple of "
                    f"PP={pp}: give each pipeline stage whole segments")
        return None
    if len(main) % pp:
        ok = [d for d in _divisors(len(main)) if d <= 16]
        return (f"{len(main)} layers do not split evenly over PP={pp} stages: use PP in {ok} or mark "
                "stage boundaries with '|' in model.hybrid_layer_pattern")
    return None


def check_layout(layout: Layout, arch: SuperArchitecture | None = None, *, pattern: str | None = None,
                 precision: str = "bf16", allow_precision_fallback: bool = True,
                 check_hardware: bool = False) -> list[str]:
    """Raise :class:`LayoutError` listing every problem; return warnings (possibly empty).

    ``check_hardware`` probes this machine's GPU for NVFP4 (launch time; a dry run skips it).
    """
    L, problems, warnings = layout, [], []
    for name in ("gpus", "tp", "pp", "cp", "ep", "expert_tp", "seq_length", "mbs", "gbs"):
        value = getattr(L, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{name}={value!r}: expected a positive integer")
    if problems:
        raise LayoutError(problems)
    mp = L.tp * L.pp * L.cp
    if L.gpus % mp:
        problems.append(f"world size {L.gpus} is not a multiple of TP x PP x CP = {L.tp} x {L.pp} x "
                        f"{L.cp} = {mp} (megatron-core: world = TP x PP x CP x DP)")
    else:
        dense_dp = L.tp * L.cp * L.dp  # ranks one pipeline stage spans
        if dense_dp % (L.expert_tp * L.ep):
            ok = _divisors(dense_dp // L.expert_tp) if dense_dp % L.expert_tp == 0 else []
            problems.append(
                f"EP x ETP = {L.ep} x {L.expert_tp} must divide TP x CP x DP = {L.tp} x {L.cp} x {L.dp} "
                f"= {dense_dp}: expert parallelism re-partitions the data-parallel ranks of each "
                f"pipeline stage, it does not add GPUs (with {L.gpus} GPUs EP can be one of {ok}; EP={L.ep} "
                f"needs a world size that is a multiple of {math.lcm(mp, L.ep * L.expert_tp * L.pp)})")
        dp_mbs = L.mbs * L.dp
        if L.gbs % dp_mbs:
            problems.append(f"global batch {L.gbs} is not divisible by micro batch x data parallel = "
                            f"{L.mbs} x {L.dp} = {dp_mbs} (GBS = MBS x DP x gradient-accumulation "
                            f"steps); e.g. train.global_batch_size={max(1, L.gbs // dp_mbs) * dp_mbs}")
    if L.sp and L.tp == 1:
        problems.append("sequence parallel needs tensor parallelism: model.sequence_parallel=True with "
                        "TP=1 (set model.sequence_parallel=False or TP > 1)")
    if L.cp > 1 and L.seq_length % (2 * L.cp):
        problems.append(f"seq length {L.seq_length} is not divisible by 2 x CP = {2 * L.cp} "
                        "(context parallelism splits each sequence into 2 x CP chunks)")
    if L.ep > 1 and L.tp > 1 and not L.sp:
        warnings.append("EP > 1 with TP > 1 and sequence parallel off: megatron-core requires "
                        "sequence parallelism here (set model.sequence_parallel=True)")
    if arch is not None:
        try:
            arch.validate_parallelism(L.tp, L.ep, L.pp, L.expert_tp)
        except ValueError as exc:
            problems.append(f"model does not shard: {exc}")
        problem = _pipeline_problem(pattern or arch.hybrid_override_pattern, L.pp)
        if problem:
            problems.append(problem)
    problem, warning = _precision_check(precision, allow_precision_fallback, check_hardware)
    problems += [problem] if problem else []
    warnings += [warning] if warning else []
    if problems:
        raise LayoutError(problems)
    return warnings


_NEEDS = {"nvfp4": "Blackwell GPUs (compute capability 10.x)",
          "fp8": "GPUs of compute capability 8.9 or newer (Hopper: current, delayed or blockwise scaling)"}


def _precision_check(precision: str, allow_fallback: bool, check_hardware: bool) -> tuple[str | None, str | None]:
    """(problem, warning) for ``precision``; NVFP4 needs Blackwell + TE, FP8 Ada/Hopper or newer + TE."""
    if precision not in _NEEDS:
        return None, None
    if not check_hardware:
        return None, (f"precision={precision} runs only on {_NEEDS[precision]} with Transformer Engine; "
                      "checked at launch" + ("; elsewhere the run falls back to BF16" if allow_fallback else ""))
    from nemotron3_super.precision import unsupported_reason  # imports torch

    reason = unsupported_reason(precision)
    if reason is None:
        return None, None
    if allow_fallback:
        return None, f"precision={precision} cannot run here ({reason}): this run trains in BF16"
    return (f"precision={precision} cannot run here: {reason}. Use model.precision=bf16 or "
            "model.allow_precision_fallback=True (BF16 with a warning)"), None
