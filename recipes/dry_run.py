"""Checks a launch runs before anything starts (sequence lengths, checkpoints, the architecture after
overrides) and the ``--dry-run`` report: model, layout, schedule, data, warnings and per-GPU memory."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from nemotron3_super.recipes import RECIPES
from nemotron3_super.recipes.layout import LayoutError
from nemotron3_super.recipes.memory import estimate_memory, settings_of


def config_problems(cfg: Any, mode: str, *, launching: bool) -> list[str]:
    """Problems that are not about the layout (sequence lengths, required checkpoints)."""
    problems = []
    if cfg.model.seq_length != cfg.dataset.seq_length:
        problems.append(f"model.seq_length={cfg.model.seq_length} but dataset.seq_length="
                        f"{cfg.dataset.seq_length}: override both")
    if launching and cfg.peft is not None and not cfg.checkpoint.pretrained_checkpoint:
        problems.append("LoRA needs the base weights: checkpoint.pretrained_checkpoint=<Megatron "
                        "checkpoint dir> (convert the HF checkpoint first)")
    return problems + first_minute_problems(cfg)


def first_minute_problems(cfg: Any) -> list[str]:
    """What a launch would trip over in its first minute, checked by a dry run too: a pretrained checkpoint
    that is not there, a logger whose package is not installed."""
    problems = []
    path = cfg.checkpoint.pretrained_checkpoint
    if path:
        folder = Path(path)
        if not folder.is_dir():
            problems.append(f"checkpoint.pretrained_checkpoint={path!r}: no such folder (expected a Megatron "
                            "checkpoint, e.g. written by `nemotron3-super convert import`)")
        elif not (any(folder.glob("iter_*")) or (folder / "latest_checkpointed_iteration.txt").is_file()
                  or (folder / ".metadata").is_file()):
            problems.append(f"checkpoint.pretrained_checkpoint={path!r}: not a Megatron checkpoint (no iter_*/, "
                            "latest_checkpointed_iteration.txt or .metadata in it)")
    project = getattr(cfg.logger, "wandb_project", None)
    if project and importlib.util.find_spec("wandb") is None:
        problems.append(f"logger.wandb_project={project!r} logs to Weights & Biases, but the wandb package is not "
                        "installed here: pip install wandb, or leave logger.wandb_project unset")
    return problems


def validated_arch(cfg: Any, *, strict: bool = True):
    """Re-validate the provider after overrides (pattern spellings, layer count) -> architecture.

    ``strict=False`` lets sharding errors through, so ``layout.check_layout`` reports them together
    with every other layout problem.
    """
    model = cfg.model
    try:
        model.validate()  # SuperModelProvider: moves hybrid_override_pattern, checks num_layers + sharding
        return model.to_architecture()
    except ValueError as exc:
        error = exc
    try:
        arch = model.to_architecture()
    except ValueError:
        raise LayoutError([str(error)]) from None
    if strict or model.num_layers not in (None, arch.num_hidden_layers):
        raise LayoutError([str(error)])
    return arch


def report(name: str, cfg: Any, layout: Any, arch: Any, warnings: list[str], gpu_gib: float, *,
           bridges: dict[str, str] | None = None) -> str:
    """The dry-run text: model, layout, schedule, data, the conversion bridges the launch installs
    (``bridges``: architecture -> description), warnings and the memory table."""
    m, sch, opt = cfg.model, cfg.scheduler, cfg.optimizer
    counts = arch.param_counts()
    pattern = arch.hybrid_override_pattern
    mtp = (f", MTP {arch.mtp_hybrid_override_pattern!r} x {m.mtp_num_layers} depths"
           if arch.num_nextn_predict_layers else "")
    schedule = f"{sch.lr_decay_style}, warmup {sch.lr_warmup_iters}"
    if sch.lr_decay_style == "WSD":
        schedule += f", stable, {sch.lr_wsd_decay_style} decay over the last {sch.lr_wsd_decay_iters}"
    data = cfg.dataset
    if getattr(data, "blend_per_split", None):
        source = f"indexed blend per split, train prefixes {data.blend_per_split[0][0]}"
    elif hasattr(data, "blend_per_split"):
        source = "mock (no blend given)"
    else:
        hf = data.hf_dataset
        source = f"{hf.dataset_name or hf.path_or_dataset} {(hf.load_kwargs or {}).get('data_files', '')}".strip()
    lines = [
        f"recipe {name} ({RECIPES[name].mode}); dry run: nothing downloaded, no GPU touched",
        f"model: {len(pattern)} layers ({pattern.count('M')} Mamba-2, {pattern.count('E')} MoE, "
        f"{pattern.count('*')} attention), hidden {arch.hidden_size}, {arch.n_routed_experts} experts top-"
        f"{arch.num_experts_per_tok}{mtp}; {counts.total / 1e9:.2f}B params, "
        f"{counts.active / 1e9:.2f}B active; precision {m.precision}",
        f"layout: {layout.describe()}",
        f"optimizer: AdamW lr {opt.lr:g} -> {opt.min_lr:g}, {schedule} of {cfg.train.train_iters} iters; "
        f"wd {opt.weight_decay:g}, betas ({opt.adam_beta1:g}, {opt.adam_beta2:g})",
        f"recompute: {m.recompute_granularity or 'none'} {list(m.recompute_modules or [])}; "
        f"peft: {_describe_peft(cfg.peft)}",
        f"data: {source}; tokenizer {cfg.tokenizer.tokenizer_type} {cfg.tokenizer.tokenizer_model or ''}".rstrip(),
        *(f"bridge: {a} -> {b}" for a, b in (bridges or {}).items()),
        *(f"warning: {w}" for w in warnings),
        "",
        "per-GPU memory estimate (GiB; formulas and assumptions: nemotron3_super/recipes/memory.py)",
        estimate_memory(arch, layout, settings_of(cfg), pattern=m.hybrid_layer_pattern).table(gpu_gib),
    ]
    return "\n".join(lines)


def _describe_peft(peft: Any) -> str:
    if peft is None:
        return "none (all parameters train)"
    if hasattr(peft, "dim"):
        return f"{type(peft).__name__} rank {peft.dim}, alpha {peft.alpha}, targets {', '.join(peft.target_modules)}"
    return type(peft).__name__
