"""Megatron LoRA adapters -> HF PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``).

Megatron-Bridge's LoRA for this model targets ``linear_qkv, linear_proj, linear_fc1, linear_fc2, in_proj,
out_proj``. On the transformers side (NemotronH, peft 0.21) they land as:

==============================  ==============================================  ===========================
Megatron module                 HF in-memory target                              PEFT
==============================  ==============================================  ===========================
attention ``linear_qkv``        ``mixer.{q,k,v}_proj`` (B rows split, A shared)  target_modules
attention ``linear_proj``       ``mixer.o_proj``                                 target_modules
Mamba ``in_proj``               ``mixer.in_proj``                                target_modules
shared expert ``linear_fc1/2``  ``mixer.shared_experts.{up,down}_proj``          target_modules
routed expert ``linear_fc1/2``  ``mixer.experts.{up,down}_proj`` (3-D, fused)     target_parameters
Mamba ``out_proj``              ``mixer.out_proj``                               REFUSED by PEFT (see below)
MTP block (any of the above)    none: transformers builds no MTP modules         not expressible
==============================  ==============================================  ===========================

PEFT refuses ``out_proj`` (and ``conv1d``) on every Mamba model type, nemotron_h included
(``_check_lora_target_modules_mamba``: "Module 'out_proj' is incompatible with Mamba-based models"): the
fused CUDA path ``mamba_split_conv1d_scan_combined`` reads ``out_proj.weight`` directly, so a LoRA there
would be silently skipped on GPU. Those adapters, and the MTP ones, are never dropped silently: by
default the export fails naming them; with ``merged_base`` they are merged (W + B@A * alpha/r, computed in
FP32) into a copy of the HF base checkpoint, which the adapter's ``base_model_name_or_path`` then names.
The latent projections (``fc1/fc2_latent_proj``) are not LoRA targets in Megatron (their names match none
of the six), so there is nothing to export for them; the report says so.

Adapters are read from the LoRA-wrapped Megatron model itself (TP = EP = PP = 1, TE-free "local" spec:
per-expert ``local_experts`` adapters), through the bridge's name table; the factors equal what the host's
``stream_adapter_weights_megatron_to_hf`` yields with :class:`SuperBridge` (tested). The host's
``AutoBridge.save_hf_adapter`` writes those on-disk names (``backbone.*``, per-expert ``experts.{e}``,
``out_proj`` in target_modules), which PEFT refuses / cannot match on the in-memory model (``model.*``, fused
experts); :func:`host_adapter_deltas` reads such a folder so ``write_peft_adapter`` can rewrite it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from megatron.bridge.models.conversion.mapping_registry import MegatronMappingRegistry
from megatron.bridge.models.conversion.param_mapping import split_qkv_weights

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.bridge.table import super_mappings
from nemotron3_super.conversion.hf_io import CheckpointError, HFCheckpoint

LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj", "out_proj")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_EXPERT = re.compile(r"^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$")
_PEFT_REFUSED = {"out_proj": "PEFT refuses LoRA on Mamba out_proj for nemotron_h (its fused CUDA kernel "
                             "reads out_proj.weight directly, bypassing any adapter)"}


class PeftExportError(CheckpointError):
    """An adapter cannot be expressed in HF PEFT and no merge target was given."""


@dataclass
class LoraDelta:
    """One LoRA factor pair in HF on-disk naming: delta = B @ A * scale, shaped like ``hf_weight``."""

    megatron: str  # Megatron module name (base linear)
    hf_weight: str  # on-disk HF tensor, e.g. backbone.layers.4.mixer.q_proj.weight
    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    alpha: float
    r: int

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def delta(self) -> torch.Tensor:
        return (self.B.double() @ self.A.double() * self.scale).float()

    @property
    def kind(self) -> str:
        """'module', 'expert' (PEFT target_parameters) or why PEFT cannot take it."""
        if self.hf_weight.startswith("mtp."):
            return "mtp: transformers' NemotronH has no MTP modules"
        leaf = self.hf_weight.rsplit(".", 2)[-2]
        if leaf in _PEFT_REFUSED:
            return _PEFT_REFUSED[leaf]
        return "expert" if _EXPERT.match(self.hf_weight) else "module"


@dataclass
class PeftExportReport:
    out: str
    modules: list[str] = field(default_factory=list)  # HF target_modules
    parameters: list[str] = field(default_factory=list)  # HF target_parameters
    merged: dict[str, str] = field(default_factory=dict)  # on-disk tensor -> reason (merged into base)
    merged_base: str | None = None

    def render(self) -> str:
        lines = [f"export-lora: {self.out}: {len(self.modules)} target module(s), "
                 f"{len(self.parameters)} target parameter(s) (routed experts)"]
        reasons = defaultdict(list)
        for name, why in self.merged.items():
            reasons[why].append(name)
        for why, names in reasons.items():
            lines.append(f"MERGED into base {self.merged_base}: {len(names)} tensor(s) ({why}): "
                         + ", ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
        if not any("latent_proj" in m for m in self.modules):
            lines.append("latent projections (fc1/fc2_latent_proj): no adapters (not among Megatron's LoRA targets)")
        return "\n".join(lines)


def apply_lora(model: torch.nn.Module, targets: Iterable[str] = LORA_TARGETS, dim: int = 32,
               alpha: int = 32) -> torch.nn.Module:
    """The host's LoRA (``megatron.bridge.peft.lora.LoRA``) on a built model, TE or not. The host's LoRA
    adapts per-expert linears (SequentialMLP, TE's GroupedLinear), not GroupedMLP's stacked weights: a
    model with those and expert targets is refused rather than left without expert adapters."""
    from megatron.bridge.peft.lora import LoRA

    from nemotron3_super.grouped_experts import GroupedMLP

    grouped = next((n for n, m in model.named_modules() if isinstance(m, GroupedMLP)), None)
    if grouped and {"linear_fc1", "linear_fc2"} & set(targets):
        raise PeftExportError(f"LoRA on routed experts needs per-expert linears, but {grouped} is a GroupedMLP: "
                              "build the model with moe_grouped_gemm=False (SequentialMLP experts)")
    return LoRA(target_modules=list(targets), dim=dim, alpha=alpha)(model, training=True)


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Megatron base-linear name -> the LoRA wrapper (``.to_wrap`` base, ``.adapter`` A/B)."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "adapter") and hasattr(m, "to_wrap")}


def megatron_lora_deltas(model: torch.nn.Module, arch: SuperArchitecture) -> list[LoraDelta]:
    """Every adapter of ``model`` (TP = 1) as LoRA factors in HF on-disk naming (QKV split per head group)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized() and (
            parallel_state.get_tensor_model_parallel_world_size() > 1
            or parallel_state.get_expert_model_parallel_world_size() > 1):
        raise PeftExportError("adapter export reads full adapters: run it at TP = EP = 1")
    registry = MegatronMappingRegistry(*super_mappings(arch))
    out: list[LoraDelta] = []
    for name, wrapper in lora_modules(model).items():
        adapter = wrapper.adapter
        A = adapter.linear_in.weight.detach().float().cpu()
        B = adapter.linear_out.weight.detach().float().cpu()
        if A.ndim != 2 or B.ndim != 2:
            raise PeftExportError(f"{name}: grouped/shared-outer expert adapters are not supported "
                                  f"(got A {tuple(A.shape)}, B {tuple(B.shape)})")
        mapping = registry.megatron_to_hf_lookup(f"{name}.weight")
        if mapping is None:
            raise PeftExportError(f"{name}: adapter on a module with no HF name in the bridge table")
        r, alpha = int(adapter.dim), float(adapter.alpha)
        if isinstance(mapping.hf_param, dict):  # fused QKV: split B's rows like the base weight's
            q, k, v = split_qkv_weights(model.config, B, feature_dim=B.shape[1])
            for role, part in (("q", q), ("k", k), ("v", v)):
                out.append(LoraDelta(name, mapping.hf_param[role], A, part.contiguous(), alpha, r))
        else:  # identical row layout at TP = 1 (Mamba in_proj z|xBC|dt included)
            out.append(LoraDelta(name, mapping.hf_param, A, B, alpha, r))
    return out


def _hf_module(disk_weight: str) -> str:
    """On-disk ``backbone.layers.L.mixer.x.weight`` -> in-memory module ``model.layers.L.mixer.x``."""
    return "model." + disk_weight.removeprefix("backbone.").removesuffix(".weight")


def peft_state(deltas: list[LoraDelta], n_experts: int) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """PEFT on-disk state dict, target_modules and target_parameters for the PEFT-expressible deltas.

    Routed experts (PEFT ``ParamWrapper`` on the fused [E, out, in] parameter, rank r per expert):
    ``lora_A`` [E*r, in] holds A_e at rows e*r..e*r+r-1; ``lora_B`` [out, r*E] holds B_e[:, k] at column
    k*E + e. Several parameters of one module nest: the last in target_parameters is outermost, each
    earlier one one ``.base_layer`` deeper."""
    state: dict[str, torch.Tensor] = {}
    modules, experts = [], defaultdict(dict)
    for d in deltas:
        if d.kind == "module":
            module = _hf_module(d.hf_weight)
            modules.append(module)
            state[f"base_model.model.{module}.lora_A.weight"] = d.A.clone()  # q/k/v share A: own copies
            state[f"base_model.model.{module}.lora_B.weight"] = d.B.clone()
        elif d.kind == "expert":
            parent, e, proj = _EXPERT.match(d.hf_weight).groups()
            experts[(_hf_module(parent + ".weight"), proj)][int(e)] = d
    parameters = []
    by_parent = defaultdict(list)
    for (parent, proj) in sorted(experts, key=lambda k: (k[0], k[1] != "up_proj")):  # up_proj, then down_proj
        by_parent[parent].append(proj)
    for parent, projs in by_parent.items():
        for i, proj in enumerate(projs):
            per = experts[(parent, proj)]
            if sorted(per) != list(range(n_experts)):
                raise PeftExportError(f"{parent}.{proj}: adapters for experts {sorted(per)}, need all {n_experts}")
            r = per[0].r
            A = torch.cat([per[e].A for e in range(n_experts)], dim=0)  # [E*r, in]
            B = torch.stack([per[e].B for e in range(n_experts)], dim=-1).reshape(per[0].B.shape[0], r * n_experts)
            prefix = f"base_model.model.{parent}" + ".base_layer" * (len(projs) - 1 - i)
            state[f"{prefix}.lora_A.weight"] = A.contiguous()
            state[f"{prefix}.lora_B.weight"] = B.contiguous()
            parameters.append(f"{parent}.{proj}")
    return state, modules, parameters


def write_merged_base(hf_base: str | Path, deltas: list[LoraDelta], out: Path) -> None:
    """A copy of the HF base folder with ``deltas`` merged into their tensors (FP32 math, each tensor's stored
    dtype kept, so a BF16 base rounds the merged weight to BF16). Streams: peak memory is one output shard."""
    from nemotron3_super.conversion.hf_io import ShardedWriter, iter_tensors

    src = HFCheckpoint(hf_base)
    by_name = defaultdict(list)
    for d in deltas:
        by_name[d.hf_weight].append(d)
    missing = sorted(set(by_name) - set(src.tensors))
    if missing:
        raise PeftExportError(f"{hf_base}: base checkpoint lacks {missing[:5]} (cannot merge)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty (merged base output)")
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardedWriter(out)
    for name, t in iter_tensors(src):
        if name in by_name:
            t = (t.float() + sum(d.delta() for d in by_name[name])).to(t.dtype)
        writer.add(name, t)
    writer.close()
    for extra in Path(hf_base).iterdir():
        if extra.is_file() and extra.suffix in (".json", ".txt", ".model", ".jinja", ".py") and \
                extra.name != "model.safetensors.index.json":
            shutil.copy2(extra, out / extra.name)


def host_adapter_deltas(folder: str | Path) -> list[LoraDelta]:
    """Deltas from an adapter folder the host wrote (``AutoBridge.save_hf_adapter``): its keys are on-disk
    HF names (``base_model.model.backbone.*``, per-expert ``experts.{e}``), which HF PEFT cannot load."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("use_dora") or config.get("use_rslora"):
        raise PeftExportError(f"{folder}: DoRA / rsLoRA adapters are not supported")
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    r_default, alpha_default = int(config["r"]), float(config["lora_alpha"])
    factors: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, t in state.items():
        m = re.match(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
        if m is None or t.ndim != 2:
            raise PeftExportError(f"{folder}: unexpected adapter tensor {key!r} {tuple(t.shape)}")
        factors[m.group(1)][m.group(2)] = t.float()
    out = []
    for stem, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise PeftExportError(f"{folder}: {stem} lacks lora_{'A' if 'A' not in ab else 'B'}")
        r = int(config.get("rank_pattern", {}).get(stem, r_default))
        alpha = float(config.get("alpha_pattern", {}).get(stem, alpha_default))
        out.append(LoraDelta(stem, f"{stem}.weight", ab["A"], ab["B"], alpha, r))
    return out


def export_adapter(model: torch.nn.Module, arch: SuperArchitecture, out: str | Path, **kwargs) -> PeftExportReport:
    """Write ``model``'s LoRA adapters as an HF PEFT folder at ``out`` (see :func:`write_peft_adapter`)."""
    return write_peft_adapter(megatron_lora_deltas(model, arch), arch, out, **kwargs)


def write_peft_adapter(deltas: list[LoraDelta], arch: SuperArchitecture, out: str | Path, *,
                       base_model_name_or_path: str = "", hf_base: str | Path | None = None,
                       merged_base: str | Path | None = None) -> PeftExportReport:
    """Write ``deltas`` as an HF PEFT folder at ``out``.

    Adapters PEFT cannot take (Mamba out_proj, MTP) need ``merged_base`` (and ``hf_base``, the HF base
    folder): they are merged into a copy of it written there; without it the export raises, naming them."""
    if not deltas:
        raise PeftExportError("the model has no LoRA adapters")
    rejected = [d for d in deltas if d.kind not in ("module", "expert")]
    ranks = {(d.r, d.alpha) for d in deltas if d.kind in ("module", "expert")}
    if len(ranks) > 1:
        raise PeftExportError(f"adapters with different (rank, alpha): {sorted(ranks)}")
    if rejected and merged_base is None:
        names = sorted({d.megatron for d in rejected})
        raise PeftExportError(
            f"{len(names)} adapter(s) cannot be expressed in HF PEFT: {', '.join(names[:6])}"
            + (" ..." if len(names) > 6 else "") + f" ({'; '.join(sorted({d.kind for d in rejected}))}). "
            "Pass merged_base (CLI: --merged-base DIR, with --hf-model) to merge them into a copy of the base "
            "weights, or train without those targets")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty (adapter output)")
    report = PeftExportReport(str(out))
    if rejected:
        if hf_base is None:
            raise PeftExportError("merged_base needs hf_base (the HF base folder to copy)")
        write_merged_base(hf_base, rejected, Path(merged_base))
        report.merged = {d.hf_weight: d.kind for d in rejected}
        report.merged_base = str(merged_base)
        base_model_name_or_path = str(merged_base)
    from safetensors.torch import save_file

    state, modules, parameters = peft_state(deltas, arch.n_routed_experts or 0)
    report.modules, report.parameters = modules, parameters
    r, alpha = next(iter(ranks)) if ranks else (deltas[0].r, deltas[0].alpha)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": modules, "target_parameters": parameters or None, "modules_to_save": None,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return report
