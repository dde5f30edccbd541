"""Per-GPU memory estimate for training a Nemotron-H / Super model at a given layout (stdlib only).

A first-order model, meant to say "fits / does not fit, and why" before 64 GPUs are allocated.
Assumptions (each one is a line below):

* Weights are bf16 (2 B/param). Dense (non-expert) parameters are split over TP; routed experts over
  EP x ETP; embedding and LM head are vocab-parallel over TP. Norms, router and replicated KV heads
  are counted as if TP-split too (they are < 0.1 % of the model).
* Gradients: megatron's DDP keeps one main-grad buffer the size of the local trainable parameters,
  fp32 (4 B) with ``grad_reduce_in_fp32`` else bf16 (2 B). Not sharded (the distributed optimizer
  reduce-scatters into it).
* Optimizer: Adam keeps main params + exp_avg + exp_avg_sq (fp32: 4 + 4 + 4 = 12 B/param unless a
  precision-aware optimizer says otherwise). The distributed optimizer shards dense state over
  DP x CP and expert state over EDP = world / (ETP x EP x PP).
* Optimizer step transient: with bf16 grads and fp32 master weights the optimizer makes an fp32 copy of its
  grad shard. It lives while activations are freed, so the peak is static + max(activations, transient).
  An optimizer without master weights (torch's AdamW on bf16 parameters) makes none.
* Gradients held across the step (megatron's DDP buffer) add to everything; ``param.grad`` freed by
  ``zero_grad(set_to_none=True)`` (the plain-torch setting of ``benchmarks/train_step.py``) fills up while the
  backward frees the activations, so there the peak is static + max(activations, gradients).
* Activations: bf16, per micro batch of ``seq / CP`` tokens, balanced expert routing (the
  aux-loss-free bias keeps loads near the mean), flash attention (no s^2 scores), saved tensors
  listed per layer kind in :func:`_layer_activation_bytes`. 1F1B pipelining keeps ``min(PP - stage,
  GA)`` micro batches in flight on a stage. The last stage also holds the fp32 softmax of the
  vocab-parallel cross entropy for the main head and each MTP depth (4 B x V / TP per token).
* LoRA: the frozen base still needs weights and activations; only adapters get grads and Adam state.
  Expert adapters are shared by the local experts (the host's ``share_expert_adapters=True``).
* A fixed runtime overhead (CUDA context, NCCL buffers, allocator fragmentation) is added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nemotron3_super.recipes.layout import Layout

if TYPE_CHECKING:
    from nemotron3_super.architecture import SuperArchitecture

GIB = 1024 ** 3
BF16 = 2  # bytes


@dataclass(frozen=True)
class MemorySettings:
    """What the estimate needs from a ConfigContainer beyond the layout (read by the launcher)."""

    grad_bytes: int = 4  # DDP main-grad buffer element: 4 (fp32 reduce) or 2 (bf16)
    main_param_bytes: int = 4  # optimizer's master copy of each parameter
    moment_bytes: int = 4  # each of Adam's two moments
    distributed_optimizer: bool = True
    recompute: str | None = None  # None, "selective" or "full"
    recompute_modules: tuple[str, ...] = ()
    lora_rank: int | None = None  # None: all parameters train
    lora_targets: tuple[str, ...] = ()
    mtp_depths: int = 2  # forward passes through the (shared) MTP block
    overhead_gib: float = 4.0  # CUDA context + NCCL + fragmentation (assumed)
    persistent_grads: bool = True  # megatron DDP's grad buffer; False: param.grad freed after each step


# What the estimate was checked against: (configuration, settings, measured torch.cuda.max_memory_allocated).
# Measured on one NVIDIA H200, 2026-12-01, benchmarks/train_step.py (grouped experts, the row in BENCHMARKS.md,
# "Super's real layer shapes"): Super's dimensions, 5 layers MEM*E, no MTP, sequence 4096, micro-batch 1,
# bf16 weights + fused torch AdamW (bf16 moments), no overhead term (max_memory_allocated excludes it).
# tests/unit/test_memory_plan.py pins the estimate within 15% of each measurement.
CALIBRATION_NOTE = ("calibrated on an H200 (2026-12-01): Super's real shapes, 5 layers, micro-batch 1, within "
                    "15% of the measured peak (tests/unit/test_memory_plan.py); other layouts extrapolate")
TORCH_ADAMW_BF16 = dict(grad_bytes=2, main_param_bytes=0, moment_bytes=2, distributed_optimizer=False,
                        overhead_gib=0.0, persistent_grads=False, mtp_depths=0)
MEASURED_PEAKS_GIB = {("MEM*E", 4096, 1): 54.84}  # (pattern, seq, micro-batch) -> GiB, settings above


@dataclass
class StageMemory:
    """One pipeline stage's per-GPU estimate; sizes in bytes unless named otherwise."""

    stage: int
    pattern: str  # the stage's layer symbols
    params: int  # parameters held by one GPU of this stage (elements)
    trainable: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    in_flight: int  # micro batches whose activations are alive at once
    transient: float
    overhead: float
    persistent_grads: bool = True

    @property
    def total(self) -> float:
        if self.persistent_grads:  # the grad buffer lives through forward and backward
            return self.weights + self.grads + self.optimizer + max(self.activations, self.transient) + self.overhead
        # param.grad appears during backward, as the activations are freed
        return self.weights + self.optimizer + max(self.activations, self.grads + self.transient) + self.overhead


@dataclass
class MemoryEstimate:
    layout: Layout
    settings: MemorySettings
    stages: list[StageMemory] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(s.total for s in self.stages)

    def table(self, gpu_gib: float = 80.0) -> str:
        """Fixed-width table, one column per pipeline stage, in GiB."""
        s = self.settings
        opt = f"{s.main_param_bytes}+{s.moment_bytes}+{s.moment_bytes} B/param"
        rows = [
            ("layers (M/E/*)", [f"{p.pattern.count('M')}/{p.pattern.count('E')}/{p.pattern.count('*')}"
                                for p in self.stages]),
            ("params on GPU (B)", [f"{p.params / 1e9:.2f}" for p in self.stages]),
            ("weights (bf16)", [_g(p.weights) for p in self.stages]),
            (f"gradients ({'fp32' if s.grad_bytes == 4 else 'bf16'} buffer)", [_g(p.grads) for p in self.stages]),
            (f"optimizer ({opt}, sharded)", [_g(p.optimizer) for p in self.stages]),
            ("activations", [f"{_g(p.activations)} ({p.in_flight} mb)" for p in self.stages]),
            ("optimizer-step transient", [_g(p.transient) for p in self.stages]),
            ("runtime overhead (assumed)", [_g(p.overhead) for p in self.stages]),
            ("total (peak)", [_g(p.total) for p in self.stages]),
        ]
        width = max(len(r[0]) for r in rows) + 2
        col = max(12, *(len(v) + 2 for _, vals in rows for v in vals))
        lines = [" " * width + "".join(f"{'stage ' + str(p.stage):>{col}}" for p in self.stages)]
        lines += [f"{name:<{width}}" + "".join(f"{v:>{col}}" for v in vals) for name, vals in rows]
        verdict = "fits" if self.peak / GIB <= gpu_gib else "DOES NOT FIT"
        lines.append(f"peak {_g(self.peak)} GiB per GPU: {verdict} in {gpu_gib:g} GiB")
        lines.append(f"memory model {CALIBRATION_NOTE}")
        return "\n".join(lines)


def settings_of(cfg: Any, overhead_gib: float = 4.0) -> MemorySettings:
    """Read :class:`MemorySettings` off a ConfigContainer (duck-typed: no host import needed)."""
    m, opt, mixed = cfg.model, cfg.optimizer, cfg.mixed_precision
    fp32_grads = getattr(mixed, "grad_reduce_in_fp32", cfg.ddp.grad_reduce_in_fp32)
    size = lambda dtype, default: getattr(dtype, "itemsize", default)  # noqa: E731 - torch.dtype
    aware = bool(getattr(opt, "use_precision_aware_optimizer", False))
    peft = cfg.peft
    return MemorySettings(
        grad_bytes=4 if fp32_grads else 2,
        main_param_bytes=size(opt.main_params_dtype, 4) if aware else 4,
        moment_bytes=max(size(opt.exp_avg_dtype, 4), size(opt.exp_avg_sq_dtype, 4)) if aware else 4,
        distributed_optimizer=bool(opt.use_distributed_optimizer),
        recompute=m.recompute_granularity, recompute_modules=tuple(m.recompute_modules or ()),
        lora_rank=getattr(peft, "dim", None) if peft is not None else None,
        lora_targets=tuple(getattr(peft, "target_modules", None) or ()),
        mtp_depths=(m.mtp_num_layers or 0) if m.mtp_hybrid_override_pattern else 0,
        overhead_gib=overhead_gib)


def _g(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f}"


def _expert_params(arch: SuperArchitecture, sym: str) -> int:
    """Routed-expert elements of one layer (up + down per expert, in the latent width if any)."""
    if sym != "E":
        return 0
    return arch.n_routed_experts * 2 * arch.moe_intermediate_size * (arch.moe_latent_size or arch.hidden_size)


def _lora_params(arch: SuperArchitecture, sym: str, rank: int, targets: tuple[str, ...], etp: int) -> int:
    """Adapter elements (A: in x r, B: r x out) one GPU holds for one layer."""
    h, r, t = arch.hidden_size, rank, set(targets)
    shapes: list[tuple[int, int]] = []
    if sym == "*":
        shapes += [(h, arch.attention_q_dim + 2 * arch.attention_kv_dim)] * ("linear_qkv" in t)
        shapes += [(arch.attention_q_dim, h)] * ("linear_proj" in t)
    elif sym == "M":
        shapes += [(h, arch.mamba_in_proj_rows)] * ("in_proj" in t) + [(arch.mamba_d_inner, h)] * ("out_proj" in t)
    elif sym == "E":
        lat, f = arch.moe_latent_size or h, arch.moe_intermediate_size // etp
        s = arch.moe_shared_expert_intermediate_size
        shapes += [(h, s), (lat, f)] * ("linear_fc1" in t) + [(s, h), (f, lat)] * ("linear_fc2" in t)
    elif sym == "-":
        i = arch.intermediate_size
        shapes += [(h, i)] * ("linear_fc1" in t) + [(i, h)] * ("linear_fc2" in t)
    return sum(r * (a + b) for a, b in shapes)


def _layer_activation_bytes(arch: SuperArchitecture, sym: str, L: Layout, s: MemorySettings) -> float:
    """Bytes saved for backward per token of one layer on one GPU.

    Each entry: (elements per token, recompute module that drops it or None). Hidden-size
    tensors are TP-split only with sequence parallelism; GEMM outputs are always TP-split.
    """
    h, t = arch.hidden_size, L.tp
    hs = h / t if L.sp else h  # residual stream / norm outputs
    tok = 1 / t if L.sp else 1  # routed tokens per GPU relative to the sequence (SP splits them)
    entries: list[tuple[float, str | None]] = [(hs, None), (hs, "layernorm")]  # layer input, norm output
    if sym == "M":
        entries += [(arch.mamba_in_proj_rows / t, None),  # z, xBC, dt
                    (arch.mamba_conv_dim / t, None),  # conv1d + SiLU output (x, B, C)
                    (2 * arch.mamba_d_inner / t, None)]  # scan output y, gated-norm output
    elif sym == "*":
        entries += [((arch.attention_q_dim + 2 * arch.attention_kv_dim) / t, None),  # q, k, v
                    (arch.attention_q_dim / t, None)]  # attention context (linear_proj input)
    elif sym == "-":
        entries += [(2 * arch.intermediate_size / t, "mlp")]  # fc1 output, activation output
    elif sym == "E":
        k, lat = arch.num_experts_per_tok, arch.moe_latent_size or h
        f = arch.moe_intermediate_size / L.expert_tp
        shared = arch.moe_shared_expert_intermediate_size / t
        entries += [(4 * arch.n_routed_experts * tok, "moe"),  # fp32 router logits + scores (2 x 4 B)
                    (2 * shared, "shared_experts"),  # shared expert fc1 + activation outputs
                    (2 * lat * tok, "moe"),  # latent down-projection out, combine output
                    (k * 2 * lat * tok, "moe"),  # k dispatched copies: expert input + fc2 output
                    (k * f * tok, "moe"),  # expert fc1 outputs
                    (k * f * tok, "moe_act")]  # expert relu^2 outputs
    if s.recompute == "full":  # only each layer's input survives; recomputed one layer at a time
        return hs * BF16
    dropped = set(s.recompute_modules) if s.recompute == "selective" else set()
    if sym == "E" and "moe" in dropped:  # checkpointed MoE keeps just its input (the norm output)
        dropped |= {"shared_experts", "moe_act"}
    return BF16 * sum(n for n, tag in entries if tag not in dropped)


def estimate_memory(arch: SuperArchitecture, layout: Layout, settings: MemorySettings | None = None,
                    pattern: str | None = None) -> MemoryEstimate:
    """Estimate per-GPU memory for every pipeline stage (pattern '|' marks explicit stage cuts)."""
    s, L = settings or MemorySettings(), layout
    main = (pattern or arch.hybrid_override_pattern).split("/")[0]
    if "|" in main:
        segments = main.split("|")
        per = len(segments) // L.pp
        stages = ["".join(segments[i * per:(i + 1) * per]) for i in range(L.pp)]
    else:
        n = len(main) // L.pp
        stages = [main[i * n:(i + 1) * n] for i in range(L.pp)]
    tokens = L.seq_length * L.mbs / L.cp  # tokens per micro batch per GPU
    h, vocab_shard = arch.hidden_size, arch.vocab_size * arch.hidden_size / L.tp
    mtp = arch.mtp_hybrid_override_pattern if arch.num_nextn_predict_layers else ""
    out = MemoryEstimate(L, s)
    for i, stage in enumerate(stages):
        last = i == L.pp - 1
        blocks = stage + (mtp if last else "")  # MTP weights are stored once, on the last stage
        dense = sum(arch.layer_params(c) - _expert_params(arch, c) for c in blocks) / L.tp
        experts = sum(_expert_params(arch, c) for c in blocks) / (L.ep * L.expert_tp)
        dense += vocab_shard * (i == 0) + (vocab_shard * (not arch.tie_word_embeddings) + h) * last
        dense += (4 * h + 2 * h * h / L.tp) * bool(mtp) * last  # MTP enorm/hnorm/final norm, eh_proj
        if s.lora_rank:
            adapters = sum(_lora_params(arch, c, s.lora_rank, s.lora_targets, L.expert_tp) for c in blocks)
            train_dense, train_expert, params = adapters, 0.0, dense + experts + adapters
        else:
            train_dense, train_expert, params = dense, experts, dense + experts
        shard_d = L.dp * L.cp if s.distributed_optimizer else 1
        shard_e = L.edp if s.distributed_optimizer else 1
        opt_bytes = s.main_param_bytes + 2 * s.moment_bytes
        optimizer = opt_bytes * (train_dense / shard_d + train_expert / shard_e)
        upcast = s.grad_bytes < 4 and s.main_param_bytes >= 4  # bf16 grads into an fp32-master optimizer
        transient = 4 * (train_dense / shard_d + train_expert / shard_e) if upcast else 0.0
        per_mb = tokens * sum(_layer_activation_bytes(arch, c, L, s) for c in stage)
        in_flight = max(1, min(L.pp - i, L.grad_accum))
        activations = in_flight * per_mb
        if s.recompute == "full" and stage:  # one layer's full activations while it is recomputed
            full = MemorySettings(**{**s.__dict__, "recompute": None})
            activations += tokens * max(_layer_activation_bytes(arch, c, L, full) for c in stage)
        if last:  # fp32 softmax of the vocab-parallel cross entropy: main head + each MTP depth
            heads = 1 + (s.mtp_depths if mtp else 0)
            activations += heads * tokens * 4 * arch.vocab_size / L.tp
            mtp_tokens = tokens * (s.mtp_depths if mtp else 0)
            activations += mtp_tokens * (3 * h * BF16 + sum(_layer_activation_bytes(arch, c, L, s) for c in mtp))
        out.stages.append(StageMemory(
            stage=i, pattern=stage, params=int(params), trainable=int(train_dense + train_expert),
            weights=BF16 * params, grads=s.grad_bytes * (train_dense + train_expert), optimizer=optimizer,
            activations=activations, in_flight=in_flight, transient=transient, overhead=s.overhead_gib * GIB,
            persistent_grads=s.persistent_grads))
    return out
