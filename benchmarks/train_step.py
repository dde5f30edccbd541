"""Training-step throughput on one GPU: this library's Super model vs the host's built-in Nemotron-H path.

    source .whl/prelude.sh; python3 benchmarks/train_step.py --json $OUT/train_step.json --profile
    PYTHONPATH=/tmp/ccsite:$PYTHONPATH python3 benchmarks/train_step.py --mamba-path all --profile
    /tmp/v312/bin/python benchmarks/train_step.py --build-only --hidden 256 --vocab 1024 --experts 8 --topk 2
    python benchmarks/train_step.py --cpu-smoke --hidden 256 --pattern '*E-' --experts 4 --vocab 256 --seq 32 --steps 3

One process builds a scaled-down Super-shaped model (default: hidden 2048, pattern ``MEM*EMEME`` = Super's
``MEM*E``/``ME`` rhythm with all three kinds, 32 routed experts top-4, LatentMoE at hidden/4 as Super's
1024/4096, a shared expert, MTP ``*E`` run at 2 depths, vocab 131072, 4096 tokens) twice:

* ``ours``  ``SuperModelProvider`` with ``spec_impl="local"`` (the GPU machine has no Transformer Engine);
* ``host``  the provider the host's own ``NemotronHBridge.provider_bridge`` makes from the same HF config,
  with megatron-core's local-module hybrid spec. megatron-core 0.19.2 cannot build that model without TE
  (its TE-free spec uses a TE norm, ``HybridStack`` builds its final norm with ``TENorm`` and ``MoELayer``
  asserts TE for the latent projections; no spec hook for the last two). The script tries the host path
  from "as shipped" towards the closest model it does build, records every error, then benchmarks that
  model and ours at the same shape (the apples-to-apples ratio) plus ours at the full latent shape.

Mamba paths (``--mamba-path``, column "mamba path"): ``fallback`` = megatron-core's unfused mixer with
``nn.Conv1d``, ``split`` = the same with causal-conv1d's CUDA conv, ``mem_eff`` = the fused
``mamba_split_conv1d_scan_combined``. The last two need causal-conv1d's CUDA extension; build it for the
visible GPU with ``benchmarks/build_causal_conv1d.py`` and put its folder on PYTHONPATH. Rows are timed for
each path in turn; the host ratio compares rows on the same path. After each path's rows, the host model
and ours at the same shape are held together and timed in interleaved rounds (``--no-paired`` skips it):
the step is launch-bound, so its time follows the load on the machine's CPUs, and the median over rounds
of host ms / ours ms is the ratio to read; the ratio of two sequential medians drifts with that load.

Each row: median of ``--steps`` (20) timed steps after ``--warmup`` (3); a step is forward + backward +
``torch.optim.AdamW`` step on one fixed random batch, bf16 weights (``.cuda().bfloat16()``, as
tests/gpu/test_tiny_train.py), timed with CUDA events. Peak memory: ``torch.cuda.max_memory_allocated``
over the timed steps (weights, gradients, optimizer state, activations).

Model FLOPs per token (matmuls only, 2 FLOPs per multiply-add; training = 3 x forward because the backward
pass computes input and weight gradients, 2 x the forward matmuls). h hidden, s sequence, V vocab:

  attention ``*``  2h(q + 2kv) + 2qh          QKV and output projections (q = heads*head_dim, kv = kv_heads*head_dim)
                   + 4qs                      scores QK^T and context PV over the FULL s x s square (megatron's
                                              convention; causal masking makes half of it wasted work, still counted)
  Mamba-2 ``M``    2h(2d + 2GN + H) + 2dh     in_proj (z, xBC, dt) and out_proj (d = heads*head_dim, G groups,
                                              N state, H heads)
                   + 2c(d + 2GN)              depthwise causal conv1d over x, B, C (c = 4 taps)
                   + 2Q(d + GN) + 4Nd         chunked SSD scan, Q = min(chunk, s): per token, intra-chunk C.B^T
                                              (per group, 2QGN) and its product with x (per head, 2Qd), the chunk
                                              state B^T x (2Nd) and its read-out C.state (2Nd); the inter-chunk
                                              state recurrence (2HNP/Q per token) is left out
  MoE ``E``        2hE                        router (E routed experts)
                   + 4hL                      LatentMoE down/up projections h <-> L (L = moe_latent_size; 0 without)
                   + 4kL'F                    top-k relu2 routed experts, up + down (L' = L, or h without latent)
                   + 4hF_s                    shared expert (width F_s)
  dense MLP ``-``  4hF
  LM head          2hV                        per output head
  MTP              D x (4h^2 + blocks + 2hV)  for D depths, each: eh_proj [2h -> h], the MTP pattern's blocks
                                              and its own LM head; a repeated block (Super: 1 block run at 2
                                              depths) counts once per depth it runs
Norms, activations, routing softmax/top-k, the SSD's elementwise decay and gating, embedding lookups and
the loss are not counted. TFLOP/s = FLOPs/token x tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import logging
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nemotron3_super.architecture import SuperArchitecture, super_120b_a12b  # stdlib only: FLOPs need no torch

EXIT_CANNOT_RUN = 2  # no CUDA device (or the asked-for Mamba path cannot run here)
DEFAULT_PATTERN = "MEM*EMEME"  # 4 Mamba-2, 4 latent MoE, 1 attention; every M and * followed by E, as in Super
TOP_KERNELS = 15
# build settings, not model settings: the same for both models (GPU: weights made and initialised on the GPU;
# host probes and --build-only: not initialised)
BUILD_MECHANICS = ("use_cpu_initialization", "perform_initialization")


# ---------------------------------------------------------------------- FLOPs (stdlib only: unit-tested on CPU)
def block_flops(arch: SuperArchitecture, symbol: str, seq_len: int) -> dict[str, int]:
    """Forward matmul FLOPs per token of one block, by term (formula: module docstring)."""
    h = arch.hidden_size
    if symbol == "*":
        q, kv = arch.attention_q_dim, arch.attention_kv_dim
        return {"qkv_proj": 2 * h * (q + 2 * kv), "scores": 2 * q * seq_len, "context": 2 * q * seq_len,
                "out_proj": 2 * q * h}
    if symbol == "M":
        d, state = arch.mamba_d_inner, arch.ssm_state_size
        chunk = min(arch.chunk_size, seq_len)  # a sequence shorter than a chunk is one chunk
        return {"in_proj": 2 * h * arch.mamba_in_proj_rows,  # rows = 2d + 2GN + H
                "conv1d": 2 * arch.conv_kernel * arch.mamba_conv_dim,
                "ssd": 2 * chunk * (d + arch.n_groups * state) + 4 * state * d,
                "out_proj": 2 * d * h}
    if symbol == "E":
        latent = arch.moe_latent_size or 0
        return {"router": 2 * h * arch.n_routed_experts, "latent_proj": 4 * h * latent,
                "routed_experts": 4 * arch.num_experts_per_tok * (latent or h) * arch.moe_intermediate_size,
                "shared_expert": 4 * h * arch.moe_shared_expert_intermediate_size}
    if symbol == "-":
        return {"mlp": 4 * h * arch.intermediate_size}
    raise ValueError(f"unknown layer symbol {symbol!r}")


def forward_flops_per_token(arch: SuperArchitecture, seq_len: int, mtp_depths: int) -> dict[str, int]:
    """Forward matmul FLOPs per token, by part: backbone layer kinds, LM head, MTP (all depths)."""
    kinds = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}
    out = dict.fromkeys(kinds.values(), 0)
    for symbol in arch.hybrid_override_pattern:
        out[kinds[symbol]] += sum(block_flops(arch, symbol, seq_len).values())
    h, lm_head = arch.hidden_size, 2 * arch.hidden_size * arch.vocab_size
    out["lm_head"] = lm_head
    depths = mtp_depths if arch.mtp_hybrid_override_pattern else 0
    mtp_blocks = sum(sum(block_flops(arch, s, seq_len).values()) for s in arch.mtp_hybrid_override_pattern)
    out["mtp"] = depths * (2 * (2 * h) * h + mtp_blocks + lm_head)  # eh_proj [2h -> h] + blocks + LM head
    return out


def model_flops_per_token(arch: SuperArchitecture, seq_len: int, mtp_depths: int) -> int:
    """Training (forward + backward) model FLOPs per token: 3 x the forward matmul FLOPs."""
    return 3 * sum(forward_flops_per_token(arch, seq_len, mtp_depths).values())


# ---------------------------------------------------------------------- shapes
def bench_arch(hidden: int, pattern: str, mtp_pattern: str, experts: int, topk: int, latent: int | None,
               vocab: int, seq: int) -> SuperArchitecture:
    """Super 120B-A12B scaled to ``hidden``: every width keeps Super's ratio to the hidden size."""
    base = super_120b_a12b()
    if hidden % 256:
        raise SystemExit(f"--hidden {hidden}: expected a multiple of 256 (attention heads of {base.head_dim} "
                         f"and Mamba heads of {base.mamba_head_dim} in {base.n_groups} groups, as Super)")

    def scaled(width: int) -> int:  # Super's width at hidden 4096 -> same ratio at `hidden`
        return width * hidden // base.hidden_size

    try:
        return dataclasses.replace(
            base, hidden_size=hidden, hybrid_override_pattern=pattern, vocab_size=vocab,
            max_position_embeddings=seq,  # both providers take seq_length from it
            num_attention_heads=scaled(base.num_attention_heads),  # x head_dim 128 = hidden, as Super
            mamba_num_heads=scaled(base.mamba_num_heads),  # x 64 = d_inner 2 x hidden, as Super
            n_routed_experts=experts, num_experts_per_tok=topk,
            moe_intermediate_size=scaled(base.moe_intermediate_size),
            moe_shared_expert_intermediate_size=scaled(base.moe_shared_expert_intermediate_size),
            moe_latent_size=latent or None, intermediate_size=scaled(base.intermediate_size),
            num_nextn_predict_layers=1 if mtp_pattern else 0, mtp_hybrid_override_pattern=mtp_pattern)
    except ValueError as exc:
        raise SystemExit(f"shape not valid: {exc}") from None


def shape_summary(arch: SuperArchitecture, mtp_depths: int) -> dict[str, Any]:
    """The fields that fix the model's shape (HF names) plus the MTP depth count."""
    keys = ("hidden_size", "hybrid_override_pattern", "vocab_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "chunk_size",
            "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
            "moe_shared_expert_intermediate_size", "moe_latent_size", "mtp_hybrid_override_pattern")
    out = {k: getattr(arch, k) for k in keys}
    out["mtp_depths"] = mtp_depths if arch.mtp_hybrid_override_pattern else 0
    return out


# ---------------------------------------------------------------------- process group, seeding, imports
def import_stack() -> None:
    """megatron-bridge and megatron-core's Mamba import cleanly without TE / the Mamba-1 extension."""
    from nemotron3_super.host_compat import ensure_host_importable, ensure_mamba_ssm_importable

    ensure_mamba_ssm_importable()
    ensure_host_importable()


def reseed(seed: int, cuda: bool) -> None:
    """Same seed before every build, so both implementations start from the same RNG state."""
    import torch
    from megatron.core.tensor_parallel import random as mp_random

    torch.manual_seed(seed)
    if cuda:
        mp_random.model_parallel_cuda_manual_seed(seed)
    else:  # no CUDA RNG to fork: megatron's inference tracker makes fork() a no-op (CPU draws)
        mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


@contextlib.contextmanager
def build_device(cuda: bool) -> Iterator[None]:
    """Without CUDA, megatron-core's few ``torch.cuda.current_device()`` allocations go to the CPU."""
    if cuda:
        yield
        return
    from nemotron3_super.conversion.megatron_io import cpu_current_device

    with cpu_current_device():
        yield


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """megatron-core writes NVTE_* attention flags into os.environ at build; a failed probe must not leak them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------------- the two providers
@dataclass(frozen=True)
class Run:
    """Settings shared by every build of one benchmark run."""

    mtp_depths: int
    dispatcher: str
    cuda: bool
    seed: int

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


def ours_provider(arch: SuperArchitecture, run: Run, mem_eff: bool, init: bool = True,
                  experts: str = "grouped") -> Any:
    """This library's provider, TE-free local spec (it turns the TE/apex-only fusions off itself);
    ``experts``: "grouped" (GroupedMLP, the default) or "sequential" (megatron-core's SequentialMLP)."""
    from nemotron3_super.provider import SuperModelProvider

    mtp = {"mtp_num_layers": run.mtp_depths} if arch.mtp_hybrid_override_pattern else {}
    provider = SuperModelProvider.from_architecture(
        arch, spec_impl="local", use_mamba_mem_eff_path=mem_eff, moe_token_dispatcher_type=run.dispatcher,
        moe_grouped_gemm=experts == "grouped",
        sequence_parallel=False, use_cpu_initialization=not run.cuda, perform_initialization=init, **mtp)
    provider.finalize()
    return provider


@dataclass(frozen=True)
class HostVariant:
    """One way of asking the host for the model, from "as shipped" towards what builds without TE."""

    label: str
    te_free_settings: bool  # harmonised_settings() applied (fusions off, local attention, same dispatcher, ...)
    spec: str  # "default": the provider's own spec choice (TE); "local": megatron-core's local-module spec
    torch_norm: bool = False  # that spec's TE-backed Norm replaced by megatron-core's torch RMSNorm
    latent: bool = True  # keep LatentMoE (moe_latent_size)
    final_norm: bool = True  # keep HybridStack's final norm (megatron-core builds it with TENorm)


HOST_VARIANTS = (
    HostVariant("as shipped: NemotronHBridge.provider_bridge(config) and its default hybrid spec (TE)",
                te_free_settings=False, spec="default"),
    HostVariant("TE-free settings, the provider's default hybrid spec (TE)", te_free_settings=True, spec="default"),
    HostVariant("TE-free settings + megatron-core's local-module hybrid spec "
                "(get_hybrid_stack_modelopt_spec(local_core_attention=True))", te_free_settings=True, spec="local"),
    HostVariant("... with that spec's TE-backed Norm -> megatron-core's WrappedTorchNorm (torch RMSNorm)",
                te_free_settings=True, spec="local", torch_norm=True),
    HostVariant("... and HybridStack(post_layer_norm=False) through the spec's params (no final norm)",
                te_free_settings=True, spec="local", torch_norm=True, final_norm=False),
    HostVariant("... final norm kept, latent MoE off (moe_latent_size=None)", te_free_settings=True, spec="local",
                torch_norm=True, latent=False),
    HostVariant("... final norm off and latent MoE off", te_free_settings=True, spec="local", torch_norm=True,
                latent=False, final_norm=False),
)


def host_local_spec(torch_norm: bool, final_norm: bool) -> Any:
    """megatron-core's own local-module hybrid stack spec (the ModelOpt one; megatron-core 0.19.2 has no
    other TE-free hybrid spec), optionally with its ``Norm`` (TE-only) swapped for megatron-core's torch
    norm and the stack's final norm switched off through the spec's params."""
    from megatron.core.post_training.modelopt.hybrid.model_specs import get_hybrid_stack_modelopt_spec
    from megatron.core.post_training.modelopt.layers import Norm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    spec = copy.deepcopy(get_hybrid_stack_modelopt_spec(local_core_attention=True))
    seen: set[int] = set()

    def swap_norms(node: Any) -> None:  # every `Norm` field of the nested ModuleSpec / submodules dataclasses
        if id(node) in seen or node is None or isinstance(node, (str, int, float, bool, type)):
            return
        seen.add(id(node))
        if isinstance(node, (list, tuple)):
            for item in node:
                swap_norms(item)
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if value is Norm:
                    setattr(node, f.name, WrappedTorchNorm)
                else:
                    swap_norms(value)

    if torch_norm:
        swap_norms(spec)
    if not final_norm:
        spec.params = {**spec.params, "post_layer_norm": False}
    return spec


def harmonised_settings(run: Run, arch: SuperArchitecture, mem_eff: bool, init: bool) -> dict[str, Any]:
    """Settings given to the host provider so both models run the same way without TE/apex."""
    from megatron.core.transformer.enums import AttnBackend

    from nemotron3_super.provider import LOCAL_SPEC_OFF

    out: dict[str, Any] = {name: False for name in LOCAL_SPEC_OFF}  # need TE or apex kernels
    out.update(sequence_parallel=False,
               moe_shared_expert_overlap=False,  # ours: megatron refuses it with latent MoE in training
               attention_backend=AttnBackend.local, transformer_impl="local",
               moe_token_dispatcher_type=run.dispatcher, use_mamba_mem_eff_path=mem_eff)
    if arch.mtp_hybrid_override_pattern:
        out["mtp_num_layers"] = run.mtp_depths  # host: num_nextn_predict_layers (1) depths; ours: 2
    out.update(use_cpu_initialization=not run.cuda, perform_initialization=init)
    return out


def host_provider(arch: SuperArchitecture, run: Run, variant: HostVariant, mem_eff: bool,
                  init: bool = True) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """The host's own Nemotron-H provider for ``arch``'s HF config, asked for as ``variant`` says.
    Returns (finalized provider, {setting: (host default, value used)})."""
    import types

    from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge
    from megatron.core.process_groups_config import ProcessGroupCollection
    from transformers import NemotronHConfig

    if not variant.latent:
        arch = dataclasses.replace(arch, moe_latent_size=None)
    config = NemotronHConfig(**arch.to_hf_config_dict({"dtype": "bfloat16"}))
    provider = NemotronHBridge().provider_bridge(types.SimpleNamespace(config=config))
    changed: dict[str, tuple[Any, Any]] = {}
    settings = (harmonised_settings(run, arch, mem_eff, init) if variant.te_free_settings else
                {"use_cpu_initialization": not run.cuda, "perform_initialization": init})
    for name, value in settings.items():
        changed[name] = (getattr(provider, name), value)
        setattr(provider, name, value)
    if variant.spec == "local":
        provider.hybrid_stack_spec = host_local_spec(variant.torch_norm, variant.final_norm)
    provider.finalize()
    # as the host's provide_distributed_model does: megatron-core's global groups
    provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    return provider, changed


def provide(provider: Any, run: Run) -> Any:
    """Build the model; on GPU in bf16 like tests/gpu/test_tiny_train.py (``.cuda().bfloat16()``)."""
    reseed(run.seed, run.cuda)
    with build_device(run.cuda):
        model = provider.provide()
    return model.cuda().bfloat16() if run.cuda else model


def error_record(exc: BaseException) -> dict[str, str]:
    """The exception's message, the innermost frame that raised it and, when that frame is not in
    megatron, the innermost megatron frame on the way."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []

    def where(frame: traceback.FrameSummary) -> str:
        return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} ({frame.name})"

    text = where(frames[-1]) if frames else "?"
    if frames and "megatron/" not in frames[-1].filename:
        inner = next((f for f in reversed(frames) if "megatron/" in f.filename), None)
        text += f", called from {where(inner)}" if inner else ""
    return {"error": f"{type(exc).__name__}: {exc}", "raised_at": text}


@dataclass
class HostPlan:
    """What the host builds: every variant tried, and the first TE-free one that built."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    variant: HostVariant | None = None
    arch: SuperArchitecture | None = None
    provider: Any = None  # finalized provider of the chosen variant (for the settings / differences)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    params: int | None = None

    def differences(self, full: SuperArchitecture) -> list[str]:
        """How the host's model differs from the full benchmark shape (empty: it is the full shape)."""
        out = []
        if self.variant and not self.variant.final_norm:
            out.append("no final norm before the LM head (megatron-core builds it only as TENorm)")
        if self.arch and self.arch.moe_latent_size != full.moe_latent_size:
            out.append(f"no LatentMoE: routed experts work in hidden {full.hidden_size} instead of latent "
                       f"{full.moe_latent_size} (megatron-core's MoELayer asserts TE for the latent projections)")
        return out


def probe_host(full: SuperArchitecture, run: Run) -> HostPlan:
    """Ask the host for the model in each HOST_VARIANTS way (weights not initialised) until a TE-free
    variant builds; record each outcome with its exact error."""
    plan, tried = HostPlan(), set()
    for variant in HOST_VARIANTS:
        latent = variant.latent and bool(full.moe_latent_size)
        key = (variant.te_free_settings, variant.spec, variant.torch_norm, latent, variant.final_norm)
        if key in tried:  # e.g. "latent off" when the shape has no latent MoE anyway
            continue
        tried.add(key)
        record: dict[str, Any] = {"variant": variant.label, "latent_moe": latent,
                                  "final_norm": variant.final_norm}
        provider = model = None
        with restored_environ():
            try:
                provider, changed = host_provider(full, run, variant, mem_eff=False, init=False)
                model = provide(provider, run)
                record.update(outcome="built", params=sum(p.numel() for p in model.parameters()))
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                record.update(outcome="failed", **error_record(exc))
        plan.attempts.append(record)
        del model
        free_cuda()
        if record["outcome"] == "built" and variant.spec == "local":  # TE-free, like ours
            plan.variant, plan.provider, plan.changed = variant, provider, changed
            plan.arch = full if latent else dataclasses.replace(full, moe_latent_size=None)
            plan.params = record["params"]
            break
    return plan


def config_differences(ours: Any, host: Any) -> dict[str, tuple[str, str]]:
    """Model-config fields (after finalize) where the two providers still differ."""
    import functools

    skip = {"hybrid_stack_spec", "_pg_collection", "hf_model_id", "hf_model_revision"}

    def show(value: Any) -> str:
        if isinstance(value, functools.partial):
            return f"partial({getattr(value.func, '__name__', value.func)}, {value.keywords})"
        if callable(value) and hasattr(value, "__qualname__"):
            return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
        return repr(value)

    out = {}
    for f in dataclasses.fields(host):
        if f.name in skip or not hasattr(ours, f.name):
            continue
        a, b = getattr(ours, f.name), getattr(host, f.name)
        with contextlib.suppress(Exception):
            if bool(a == b):  # 10000 == 10000.0
                continue
        if show(a) != show(b):
            out[f.name] = (show(a), show(b))
    return out


# ---------------------------------------------------------------------- timing
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


# ---------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowPlan:
    impl: str  # "ours" | "host"
    shape: str  # "full" | "host-buildable"
    arch: SuperArchitecture
    experts: str | None = None  # ours: "grouped" | "sequential" (--expert-impl); host: its SequentialMLP


EXPERT_IMPLS = {"grouped": ["grouped"], "sequential": ["sequential"], "both": ["grouped", "sequential"]}


def row_label(row: dict[str, Any]) -> str:
    """"ours (grouped)", "ours (sequential)" or "host": the table's impl column."""
    return f"{row['impl']} ({row['experts']})" if row.get("experts") else row["impl"]


# --mamba-path values: what megatron-core's MambaMixer runs per Mamba layer
MAMBA_PATHS = {
    "fallback": "use_mamba_mem_eff_path=False, conv forced to nn.Conv1d (runs without causal-conv1d)",
    "split": "use_mamba_mem_eff_path=False with causal-conv1d's CUDA conv (needs causal-conv1d)",
    "mem_eff": "use_mamba_mem_eff_path=True: conv, SSD scan, gating and out-norm fused (needs causal-conv1d)",
}
PATH_SETS = {"both": ["fallback", "mem_eff"], "all": ["fallback", "split", "mem_eff"]}


def mamba_kernels(mem_eff: bool) -> str:
    """Which Mamba kernels a row runs (megatron-core's MambaMixer picks them at import / per flag)."""
    if mem_eff:
        return "mamba_split_conv1d_scan_combined (causal-conv1d CUDA + Triton SSD, fused)"
    from megatron.core.ssm import mamba_mixer

    conv = "nn.Conv1d" if mamba_mixer.causal_conv1d_fn is None else "causal_conv1d_fn"
    return f"{conv} + Triton mamba_chunk_scan_combined"


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


def mem_eff_unavailable() -> str | None:
    """Why the memory-efficient Mamba path cannot run here (it needs causal-conv1d's CUDA kernels)."""
    try:
        import causal_conv1d  # noqa: F401
        from causal_conv1d.cpp_functions import causal_conv1d_fwd_function  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA extension
        return f"causal_conv1d does not import ({type(exc).__name__}: {exc})"
    return None


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
        stack.enter_context(build_device(run.cuda))  # CPU smoke: megatron's cuda.current_device() buffers
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
        with mamba_path_kernels(path), build_device(run.cuda):
            return measure()
    except Exception as exc:  # noqa: BLE001 - e.g. both models do not fit: the sequential rows still stand
        return {**error_record(exc), "trace": traceback.format_exc(limit=-6)}
    finally:
        free_cuda()


# ---------------------------------------------------------------------- output
def fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """tokens/s of each ``ours`` row / the host row on the same Mamba path; ``same_shape`` says whether
    the two rows ran the same model shape (the apples-to-apples ratio) or not."""
    for r in rows:
        host = next((h for h in rows if h["impl"] == "host" and h["mamba_path"] == r["mamba_path"]), None)
        if r["impl"] == "ours" and host and r.get("tokens_per_s") and host.get("tokens_per_s"):
            r["ratio_vs_host"] = r["tokens_per_s"] / host["tokens_per_s"]
            r["ratio_same_shape"] = r["shape_config"] == host["shape_config"]


def iqr(values: list[float]) -> str:
    """Interquartile range of step times, e.g. "288-435" (ms): how much a shared host's load moved them."""
    if len(values) < 2:
        return "—"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.0f}-{q3:.0f}"


def paired_cell(paired: dict[str, Any] | None) -> str:
    if paired is None:
        return "—"
    if "error" in paired:
        return f"failed: {paired['error'][:60]}"
    return f"{paired['ratio_median']:.3f} ({paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f})"


def path_agreement(rows: list[dict[str, Any]]) -> list[str]:
    """Same model, same seed, same batch on each Mamba path, and with either expert module (both draw the
    same initial weights): the first timed step's loss (after the warm-up updates) must agree to bf16
    rounding, or a path / module computes something else."""
    lines = []
    groups = {"mamba path": lambda r: (row_label(r), r["shape"]), "expert module": lambda r: (
        r["impl"], r["shape"], r["mamba_path"]) if r.get("experts") else None}
    for varies, key in groups.items():
        for group in dict.fromkeys(key(r) for r in rows if key(r)):
            losses = {r["mamba_path"] if varies == "mamba path" else r["experts"]: r["loss_first"]
                      for r in rows if key(r) == group and "loss_first" in r}
            if len(losses) < 2:
                continue
            ref = next(iter(losses.values()))
            spread = max(abs(v - ref) for v in losses.values()) / abs(ref)
            lines.append(f"loss after warm-up by {varies}, {' @ '.join(group[:2])}"
                         + (f", mamba {group[2]}" if len(group) > 2 else "") + ": "
                         + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                         + f" (largest relative difference {spread:.1e})")
    return lines


def markdown_table(rows: list[dict[str, Any]], host_differences: list[str]) -> str:
    head = ("| impl | shape | mamba path | params (B) | step ms (median (IQR)) | tokens/s | TFLOP/s | peak GiB "
            "| ratio vs host (tokens/s ours / host) | paired ratio (interleaved, IQR) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {row_label(r)} | {r['shape']} | {r['mamba_path']} | failed: {r['error'][:100]} "
                         "| | | | | | |")
            continue
        ratio = r.get("ratio_vs_host")
        ratio_s = "—" if ratio is None else f"{ratio:.3f}" if r["ratio_same_shape"] else f"({ratio:.3f})†"
        lines.append(f"| {row_label(r)} | {r['shape']} | {r['mamba_path']} | {r['params'] / 1e9:.3f} "
                     f"| {r['step_ms_median']:.1f} ({iqr(r['step_ms'])}) | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} "
                     f"| {fmt(r['peak_gib'], '.2f')} | {ratio_s} | {paired_cell(r.get('paired'))} |")
    if any(r["shape"] == "host-buildable" for r in rows):
        lines.append("\nhost-buildable shape = the full shape with " + "; ".join(host_differences) + ".")
    if any(r.get("ratio_vs_host") is not None and not r["ratio_same_shape"] for r in rows):
        lines.append("† different shape from the host row (full latent shape vs the host-buildable one): "
                     "a tokens/s ratio across shapes, not an implementation comparison.")
    return "\n".join(lines)


def print_host_plan(plan: HostPlan, full: SuperArchitecture) -> None:
    print("\nHost built-in path (NemotronHBridge provider + megatron-core modules), tried in this order:")
    for i, a in enumerate(plan.attempts, 1):
        print(f"  {i}. {a['variant']}\n     -> {a['outcome']}" +
              (f": {a['error']}\n        raised at {a['raised_at']}" if a["outcome"] == "failed"
               else f" ({a['params'] / 1e9:.3f} B params)"))
    if plan.variant is None:
        print("  => the host builds no TE-free variant of this model: host rows skipped")
        return
    diffs = plan.differences(full)
    print("  => host row: variant " + repr(plan.variant.label) +
          ("\n     differs from the full shape: " + "; ".join(diffs) if diffs else " (full shape)"))


def print_flops(label: str, arch: SuperArchitecture, seq: int, mtp_depths: int) -> None:
    """Forward GFLOP/token by part and the training total (3 x), so a reader sees what dominates."""
    depths = mtp_depths if arch.mtp_hybrid_override_pattern else 0
    parts = forward_flops_per_token(arch, seq, depths)
    total = sum(parts.values())
    shares = ", ".join(f"{k} {v / 1e9:.3f} ({100 * v / total:.0f}%)" for k, v in parts.items() if v)
    print(f"  {label}: forward GFLOP/token {shares}; training {3 * total / 1e9:.3f} GFLOP/token")


def versions() -> dict[str, str | None]:
    out = {}
    for dist in ("torch", "megatron-core", "megatron-bridge", "transformers", "mamba-ssm", "causal-conv1d",
                 "triton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ---------------------------------------------------------------------- main
def describe_host(host: HostPlan, full: SuperArchitecture, run: Run) -> dict[str, Any]:
    """Print the settings the host provider was given and what still differs from ours; return them."""
    out: dict[str, Any] = {"host_attempts": host.attempts,
                           "host_variant": host.variant.label if host.variant else None}
    if not host.variant:
        return out
    ours_ref = ours_provider(host.arch, run, mem_eff=False, init=False)
    settings = {name: {"host_default": old, "used": new, "ours": getattr(ours_ref, name)}
                for name, (old, new) in host.changed.items() if name not in BUILD_MECHANICS}
    settings["use_mamba_mem_eff_path"].update(used="per row (mamba path column)", ours="per row")
    diffs = config_differences(ours_ref, host.provider)
    if not host.variant.final_norm:
        diffs["final norm (HybridStack)"] = ("RMSNorm", "none")
    print("\nSettings applied to the host provider (host default -> used; ours):")
    for name, value in settings.items():
        print(f"  {name}: {value['host_default']} -> {value['used']}; ours {value['ours']}")
    print("Other differences between the providers at the host-buildable shape (ours vs host):")
    for name, (a, b) in diffs.items():
        print(f"  {name}: ours {a}, host {b}")
    out.update(host_settings=settings, config_differences=diffs, host_shape_differences=host.differences(full),
               shape_host=shape_summary(host.arch, run.mtp_depths), hf_config_host=host.arch.to_hf_config_dict())
    return out


def build_only(rows_plan: list[RowPlan], run: Run, host: HostPlan | None, full: SuperArchitecture,
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build each row's model once (no timing) and print its parameter count."""
    results = []
    for row in rows_plan:
        depths = run.mtp_depths if row.arch.mtp_hybrid_override_pattern else 0
        entry = {"impl": row.impl, "experts": row.experts, "shape": row.shape,
                 "flops_per_token": model_flops_per_token(row.arch, args.seq, depths)}
        try:
            _, model = build_row(row, run, host, mem_eff=False, init=False)
            entry["params"] = sum(p.numel() for p in model.parameters())
            del model
        except Exception as exc:  # noqa: BLE001 - reported, the other rows still build
            entry.update(error_record(exc))
        free_cuda()
        results.append(entry)
        print(f"built {row_label(entry):17s} @ {row.shape:14s}: " +
              (f"{entry['params']:,} params, {entry['flops_per_token'] / 1e9:.3f} GFLOP/token (train)"
               if "params" in entry else f"FAILED {entry['error']}"))
    if host:
        diffs = host.differences(full) if host.variant else ["builds nothing without TE"]
        print("host builds the full model: " + ("yes" if not diffs else "no (" + "; ".join(diffs) + ")"))
    return results


def benchmark(rows_plan: list[RowPlan], paths: list[str], run: Run, host: HostPlan | None,
              full: SuperArchitecture, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every (row, Mamba path); print the table and, with --profile, the top kernels."""
    rows = []
    same_shape = [r for r in rows_plan if r.shape == "host-buildable"]  # host and ours (first expert module)
    pair = [r for r in same_shape if r.impl == "host"][:1] + [r for r in same_shape if r.impl == "ours"][:1]
    for path in paths:
        for row in rows_plan:
            label = row_label({"impl": row.impl, "experts": row.experts})
            print(f"\n[{label} @ {row.shape}, mamba {path}] building and timing ...", flush=True)
            result = run_row(row, path, run, host, args)
            rows.append(result)
            if "error" in result:
                print(f"  FAILED: {result['error']}")
            else:
                print(f"  {result['mamba_kernels']}; median {result['step_ms_median']:.1f} ms, loss "
                      f"{result['loss_first']:.3f} -> {result['loss_last']:.3f}")
        if args.paired and host and len(pair) == 2 and not any("error" in r for r in rows[-len(rows_plan):]):
            print(f"\n[host vs ours @ host-buildable, mamba {path}] interleaved rounds ...", flush=True)
            paired = run_paired(pair[0], pair[1], path, run, host, args)
            next(r for r in rows[-len(rows_plan):] if r["impl"] == "ours" and r["shape"] == "host-buildable"
                 and r["experts"] == pair[1].experts)["paired"] = paired
            print(f"  FAILED: {paired['error']}" if "error" in paired else
                  f"  per-round ratio host/ours median {paired['ratio_median']:.3f} "
                  f"(IQR {paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f}; ours faster in "
                  f"{paired['rounds_ours_faster']} of {paired['rounds']} rounds)")
    add_ratios(rows)
    print("\n" + markdown_table(rows, host.differences(full) if host else []))
    for line in path_agreement(rows):
        print(line)
    for r in rows:
        if "profile" not in r:
            continue
        prof = r["profile"]
        print(f"\nTop {TOP_KERNELS} CUDA kernels, {row_label(r)} @ full, mamba {r['mamba_path']} "
              f"(profiled step {prof['step_ms']:.1f} ms, kernels {prof['kernel_ms_total']:.1f} ms):")
        if not prof["top"]:
            print("(the profiler recorded no CUDA kernel events)")
            continue
        print("| kernel | calls | ms | % of step |\n|---|---|---|---|")
        for k in prof["top"]:
            print(f"| `{k['kernel']}` | {k['calls']} | {k['ms']:.2f} | {k['pct_of_step']:.1f} |")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("ours", "host", "both"), default="both")
    p.add_argument("--expert-impl", choices=tuple(EXPERT_IMPLS), default="grouped",
                   help="routed experts of our rows: grouped (GroupedMLP, two grouped GEMMs; the local spec's "
                        "default), sequential (megatron-core's SequentialMLP, a GEMM pair per expert), or both")
    p.add_argument("--mamba-path", choices=(*MAMBA_PATHS, *PATH_SETS), default=None,
                   help="; ".join(f"{k}: {v}" for k, v in MAMBA_PATHS.items())
                   + "; both: fallback + mem_eff; all: the three. Default: all when causal-conv1d imports, "
                     "else fallback (build it: benchmarks/build_causal_conv1d.py)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size; every width keeps Super's ratio")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, help="backbone layer pattern (M, E, *, -)")
    p.add_argument("--mtp-pattern", default="*E", help="MTP block pattern, as Super ('' = no MTP)")
    p.add_argument("--mtp-depths", type=int, default=2, help="MTP depths run per step (Super: 1 block at 2)")
    p.add_argument("--experts", type=int, default=32, help="routed experts per MoE layer")
    p.add_argument("--topk", type=int, default=4, help="experts per token")
    p.add_argument("--latent", type=int, default=None, help="moe_latent_size (default hidden/4 as Super; 0 = none)")
    p.add_argument("--vocab", type=int, default=131072, help="vocabulary (Super's: 131072)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--dispatcher", choices=("alltoall", "allgather"), default="alltoall",
                   help="moe_token_dispatcher_type for both models (build-only on CPU: allgather)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--profile", action="store_true", help="profile one step of our full-shape model")
    p.add_argument("--no-paired", dest="paired", action="store_false",
                   help="skip the interleaved host-vs-ours rounds (they hold both same-shape models at once)")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--build-only", action="store_true",
                   help="build the models (CPU allowed: gloo, CPU init), print params and what the host builds")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: run every step of the script on CPU with wall clocks (tiny shapes without "
                        "Mamba layers, whose scan is Triton-only); checks the script, measures nothing")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.latent is None:
        args.latent = args.hidden // 4  # Super: 1024 / 4096
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not (args.build_only or args.cpu_smoke):
        print("train_step.py: no CUDA device visible to torch; this benchmark needs one GPU. "
              "(--build-only builds the models on CPU; --cpu-smoke runs the whole script on CPU.)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if args.cpu_smoke and cuda:
        print("train_step.py: --cpu-smoke is for machines without a GPU; drop it to benchmark", file=sys.stderr)
        return EXIT_CANNOT_RUN
    notes = []
    dispatcher = args.dispatcher
    if not cuda and dispatcher == "alltoall":
        dispatcher = "allgather"
        notes.append("CPU build: dispatcher allgather (alltoall allocates a CUDA stream at build; same weights)")
    reason = mem_eff_unavailable()
    if args.mamba_path is None:
        args.mamba_path = "all" if reason is None else "fallback"
        if reason:
            print(f"mamba path: fallback only, because {reason}")
    elif args.mamba_path != "fallback" and reason and not args.build_only:
        print(f"--mamba-path {args.mamba_path} needs causal-conv1d's CUDA kernels, but {reason} (build them: "
              "benchmarks/build_causal_conv1d.py)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    paths = PATH_SETS.get(args.mamba_path, [args.mamba_path])
    if args.steps < 20 and not args.build_only:
        notes.append(f"only {args.steps} timed steps (the benchmark's standard is >= 20)")
    if args.cpu_smoke:
        notes.append("--cpu-smoke: CPU wall-clock times of a script check, not a measurement")

    full = bench_arch(args.hidden, args.pattern, args.mtp_pattern, args.experts, args.topk, args.latent,
                      args.vocab, args.seq)
    run = Run(mtp_depths=args.mtp_depths, dispatcher=dispatcher, cuda=cuda, seed=args.seed)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU (smoke run)' if args.cpu_smoke else 'CPU (build only)'}")
    print("shape: " + json.dumps(shape_summary(full, run.mtp_depths)))
    print(f"sequence {args.seq} x micro-batch {args.micro_batch}, bf16, {args.warmup} warm-up + {args.steps} timed "
          f"steps, torch.optim.AdamW, dispatcher {dispatcher}, mamba path(s) {', '.join(paths)}")
    for note in notes:
        print(f"note: {note}")

    import_stack()
    # megatron-core warns "use_mem_eff_path==False ... not functionally tested" once per Mamba layer per build;
    # the rows say which path ran
    logging.getLogger("megatron.core.ssm.mamba_mixer").setLevel(logging.ERROR)
    import torch.distributed as dist

    from nemotron3_super.conversion.megatron_io import parallel_group

    with parallel_group(device=run.device):  # one rank, TP = EP = PP = 1 (torn down on exit)
        if dist.get_world_size() != 1:
            raise SystemExit("train_step.py is a one-GPU benchmark: run it without torchrun")
        report = run_all(args, full, run, paths, notes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(report), indent=1))
        print(f"\nwrote {args.json}")
    return 0


def run_all(args: argparse.Namespace, full: SuperArchitecture, run: Run, paths: list[str],
            notes: list[str]) -> dict[str, Any]:
    """Probe the host, plan the rows, then build (--build-only) or benchmark them; returns the report."""
    import torch

    host = probe_host(full, run) if args.impl in ("host", "both") else None
    if host:
        print_host_plan(host, full)
    print("\nModel FLOPs (formula: module docstring; LM heads = main + one per MTP depth):")
    print_flops("full shape", full, args.seq, run.mtp_depths)
    if host and host.arch is not None and host.arch != full:
        print_flops("host-buildable shape", host.arch, args.seq, run.mtp_depths)
    rows_plan: list[RowPlan] = []
    if host and host.variant:
        exact = not host.differences(full)  # e.g. no final norm: same shape config, still not the full model
        rows_plan.append(RowPlan("host", "full" if exact else "host-buildable", host.arch))
        if args.impl == "both" and host.arch != full:
            rows_plan += [RowPlan("ours", "host-buildable", host.arch, e) for e in EXPERT_IMPLS[args.expert_impl]]
    if args.impl in ("ours", "both"):
        rows_plan += [RowPlan("ours", "full", full, e) for e in EXPERT_IMPLS[args.expert_impl]]

    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if run.cuda else None, "versions": versions(),
        "bench": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dispatcher": run.dispatcher, "notes": notes,
        "build": {"use_cpu_initialization": not run.cuda, "perform_initialization": not args.build_only,
                  "dtype": "bf16 (.cuda().bfloat16())" if run.cuda else "bf16 params on CPU"},
        "shape_full": shape_summary(full, run.mtp_depths),
        "hf_config_full": full.to_hf_config_dict(),
        "flop_formula": __doc__[__doc__.index("Model FLOPs"):],
    }
    if host:
        report.update(describe_host(host, full, run))
    if args.build_only:
        report["build_only"] = build_only(rows_plan, run, host, full, args)
    else:
        report["rows"] = benchmark(rows_plan, paths, run, host, full, args)
    return report


if __name__ == "__main__":
    sys.exit(main())
