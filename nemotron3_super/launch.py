"""Shared launcher behind ``python -m nemotron3_super.pretrain`` and ``... .finetune``.

Flow: build the recipe (offline) -> apply dotted overrides with the host's Hydra/OmegaConf machinery
(unknown keys rejected with the closest valid key) -> check the layout against megatron-core's rules
-> either print the plan and a per-GPU memory estimate (``--dry-run``, no GPU touched) or import the
host's training loop and run it. The training loop is imported only here, at launch: it needs
``nvidia_resiliency_ext.inprocess``, which recipe building and dry runs must not.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Any

from nemotron3_super.recipes import RECIPES
from nemotron3_super.upstream_flags import add_training_flags, training_overrides
from nemotron3_super.recipes.layout import LayoutError, check_layout, layout_of
from nemotron3_super.recipes.memory import estimate_memory, settings_of


class ConfigKeyError(KeyError):
    """A dotted override names a key the ConfigContainer does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# ------------------------------------------------------------------------------ overrides
def _dotted_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a plain dict/list tree (nodes and leaves) -> its value."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            out[path] = value
            out.update(_dotted_keys(value, path + "."))
    return out


def _plain_dict_at(cfg: Any, dotted: str) -> bool:
    """True if ``dotted`` names a plain dict inside ``cfg`` (where new keys are meaningful)."""
    node = cfg
    for part in filter(None, dotted.split(".")):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return isinstance(node, dict)


def _check_override_keys(cfg: Any, tree: dict[str, Any], overrides: list[str]) -> None:
    """Refuse keys the config lacks, suggesting the closest; '+' may add keys to plain dicts only.

    Without this, Hydra adds a '+key' and the host's applier then skips it with a log line: a typo
    in a 64-GPU launch would silently train with the default.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    known = _dotted_keys(tree)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except Exception as exc:  # hydra's OverrideParseException: show its message, not a traceback
        raise ValueError(f"cannot parse overrides: {exc}") from None
    for override in parsed:
        key = override.key_or_group
        if key in known:
            continue
        parent = key.rpartition(".")[0]
        if override.is_add() and parent and _plain_dict_at(cfg, parent):
            continue  # e.g. +env_vars.NCCL_DEBUG=INFO
        guesses = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
        if not guesses:  # typo in the section: match the last part within the same section
            section, leaf = key.partition(".")[0], key.rpartition(".")[2]
            same = [k for k in known if k.startswith(section + ".")]
            guesses = [k for k in same if k.rpartition(".")[2] in
                       difflib.get_close_matches(leaf, [s.rpartition(".")[2] for s in same], n=3, cutoff=0.6)][:3]
        hint = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
        if parent and parent in known and known[parent] is None:
            hint += f" ({parent!r} is None in this recipe)"
        raise ConfigKeyError(f"unknown config key {key!r} in override {override.input_line!r}{hint}")


def apply_cli_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``section.field=value`` overrides to a ConfigContainer (the host's Hydra syntax)."""
    if not overrides:
        return cfg
    from omegaconf import OmegaConf

    from megatron.bridge.training.utils.omegaconf_utils import (
        OverridesError, apply_overrides, create_omegaconf_dict_config, parse_hydra_overrides)

    tree, excluded = create_omegaconf_dict_config(cfg)
    _check_override_keys(cfg, OmegaConf.to_container(tree), overrides)
    try:
        tree = parse_hydra_overrides(tree, overrides)
    except OverridesError as exc:
        raise ValueError(str(exc)) from None
    apply_overrides(cfg, OmegaConf.to_container(tree, resolve=True), excluded)
    return cfg


def _follow_train_iters(cfg: Any, overrides: list[str], recipe_warmup: int) -> None:
    """If only ``train.train_iters`` changed, stretch the LR schedule over the new length."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if "train.train_iters" in keys and not any(k.startswith("scheduler.") for k in keys):
        from nemotron3_super.recipes.builders import fit_schedule

        fit_schedule(cfg.scheduler, cfg.train.train_iters, recipe_warmup)


# ------------------------------------------------------------------------------ checks / report
def config_problems(cfg: Any, mode: str, *, launching: bool) -> list[str]:
    """Problems that are not about the layout (sequence lengths, required checkpoints)."""
    problems = []
    if cfg.model.seq_length != cfg.dataset.seq_length:
        problems.append(f"model.seq_length={cfg.model.seq_length} but dataset.seq_length="
                        f"{cfg.dataset.seq_length}: override both")
    if launching and cfg.peft is not None and not cfg.checkpoint.pretrained_checkpoint:
        problems.append("LoRA needs the base weights: checkpoint.pretrained_checkpoint=<Megatron "
                        "checkpoint dir> (convert the HF checkpoint first)")
    return problems


def _validated_arch(cfg: Any, *, strict: bool = True):
    """Re-validate the provider after overrides (pattern spellings, layer count) -> architecture.

    ``strict=False`` lets sharding errors through, so :func:`check_layout` reports them together
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


def report(name: str, cfg: Any, layout: Any, arch: Any, warnings: list[str], gpu_gib: float) -> str:
    """The dry-run text: model, layout, schedule, data, warnings and the memory table."""
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


# ------------------------------------------------------------------------------ launch
def _training_loop(mode: str):
    """The host's pretrain/finetune entry and the GPT/hybrid forward step, imported lazily."""
    try:
        from megatron.bridge.training.gpt_step import forward_step

        if mode == "pretrain":
            from megatron.bridge.training.pretrain import pretrain as entry
        else:
            from megatron.bridge.training.finetune import finetune as entry
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("nvidia_resiliency_ext"):
            raise SystemExit(
                f"cannot launch: Megatron-Bridge's training loop imports {exc.name}, from the package "
                "nvidia-resiliency-ext, which is not installed here. Use an environment that ships it "
                "(e.g. the NeMo container); megatron-core 0.19 pins 0.6.0, which PyPI does not have, "
                "and PyPI's older builds break megatron-core checkpointing. `--dry-run` works without it."
            ) from None
        raise
    return entry, forward_step


def launch(cfg: Any, mode: str) -> None:
    """Run the host's training loop on this rank (call under torchrun)."""
    entry, forward_step = _training_loop(mode)  # host fixes (TE flags, resume, dataset helpers): host_compat
    from nemotron3_super.plugins.host import install_into_host

    # our bridge for NemotronH in the host (HF adapter/checkpoint saves during training use it) and our
    # package on its _target_ allow-list (run configs saved with our provider reload)
    install_into_host()
    entry(cfg, forward_step)


def _parser(mode: str) -> argparse.ArgumentParser:
    prog = f"python -m nemotron3_super.{'pretrain' if mode == 'pretrain' else 'finetune'}"
    what = ("Pretrain Nemotron 3 Super (mock data unless --data-blend)" if mode == "pretrain" else
            "Fine-tune Nemotron 3 Super on SQuAD: full SFT, or LoRA with --peft lora")
    p = argparse.ArgumentParser(prog=prog, description=f"{what}. --dry-run prints the plan and exits.",
                                epilog="Positional arguments are dotted overrides: model.num_layers=7 "
                                       "train.train_iters=100 (Hydra syntax; see docs/RECIPES.md).")
    p.add_argument("overrides", nargs="*", help="section.field=value")
    p.add_argument("--dry-run", action="store_true", help="print layout + memory estimate, then exit")
    p.add_argument("--gpus", type=int, help="dry run: world size to plan for (default: the recipe's); "
                                           "launch: must equal torchrun's WORLD_SIZE")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0, help="per-GPU memory for the fit check")
    p.add_argument("--tokenizer", help="HF tokenizer id or local dir (default: Nemotron 3 tokenizer)")
    add_training_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="show every host warning and INFO line "
                   "(default: the host's known TE/Apex fallback warnings are one summary line)")
    if mode == "pretrain":
        p.add_argument("--nvfp4", action="store_true", help="the published NVFP4 recipe (Blackwell)")
        p.add_argument("--data-blend", "--per-split-data-args-path", dest="data_blend", metavar="JSON",
                       help="per-split blend JSON (default: mock data); the second spelling is the upstream one")
    else:
        p.add_argument("--peft", choices=("none", "lora"), default="none", help="LoRA or full SFT")
        p.add_argument("--squad-jsonl", metavar="PATH", help="local SQuAD-format JSONL instead of the Hub")
    return p


def main(mode: str, argv: list[str] | None = None) -> int:
    """CLI entry for ``mode`` "pretrain" or "finetune"; returns the exit status."""
    args = _parser(mode).parse_intermixed_args(argv)  # options may come between the overrides
    from nemotron3_super.host_compat.warning_filters import command_output

    logging_disabled = command_output(verbose=args.verbose, quiet_info=args.dry_run)  # a launch keeps INFO
    if mode == "pretrain":
        name = "nemotron3_super_pretrain_nvfp4_config" if args.nvfp4 else "nemotron3_super_pretrain_config"
        kwargs = {"per_split_data_args_path": args.data_blend}
    else:
        name = "nemotron3_super_lora_config" if args.peft == "lora" else "nemotron3_super_sft_config"
        kwargs = {"squad_jsonl": args.squad_jsonl}
    try:
        overrides = training_overrides(args) + list(args.overrides)
    except (OSError, ValueError) as exc:
        logging.disable(logging_disabled)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_recipe(name, overrides, dry_run=args.dry_run, gpus=args.gpus, verbose=args.verbose,
                          gpu_memory_gib=args.gpu_memory_gib, tokenizer_model=args.tokenizer, **kwargs)
    finally:
        logging.disable(logging_disabled)  # as the caller had it (tests call main in their process)


def run_recipe(name: str, overrides: list[str] | tuple[str, ...] = (), *, dry_run: bool = False,
               gpus: int | None = None, gpu_memory_gib: float = 80.0, verbose: bool = False,
               **recipe_kwargs: Any) -> int:
    """Build recipe ``name`` (see RECIPES), apply dotted overrides, validate, then print the plan
    (``dry_run``) or train on this rank. The one function every front end calls (CLI, NeMo-Run)."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        raise KeyError(f"no recipe named {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                       + f" (recipes: {', '.join(RECIPES)})")
    if dry_run and not verbose:  # the host logs INFO lines (and optional-import tracebacks); warnings show
        logging.disable(logging.INFO)
    try:
        cfg, layout, arch, warnings = _prepare(name, list(overrides), recipe_kwargs, dry_run=dry_run, gpus=gpus)
    except (ValueError, ConfigKeyError, FileNotFoundError) as exc:  # LayoutError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        logging.disable(logging.NOTSET)
    if dry_run:
        print(report(name, cfg, layout, arch, warnings, gpu_memory_gib))
        return 0
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    launch(cfg, RECIPES[name].mode)
    return 0


def _prepare(name: str, overrides: list[str], recipe_kwargs: dict[str, Any], *, dry_run: bool,
             gpus: int | None) -> tuple[Any, Any, Any, list[str]]:
    """Recipe -> overrides -> validation; raises with every problem named."""
    from nemotron3_super import recipes
    from nemotron3_super.recipes.adapt import adapt_to_gpus

    mode = "pretrain" if RECIPES[name].mode == "pretrain" else "finetune"
    cfg = getattr(recipes, name)(**recipe_kwargs)
    warmup = cfg.scheduler.lr_warmup_iters
    apply_cli_overrides(cfg, overrides)
    _adopt_checkpoint_architecture(cfg, overrides)
    _follow_train_iters(cfg, overrides, warmup)
    arch = _validated_arch(cfg, strict=False)
    world = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun; plain `python -m` is one process
    # a dry run plans for --gpus or the recipe's own GPU count; a launch runs on the real world size
    planned = (gpus or _recipe_gpus(name)) if dry_run else world
    adapt_to_gpus(cfg, overrides, planned, arch)  # sizes the user did not set follow the GPUs and the model
    layout = layout_of(cfg, planned)
    problems = config_problems(cfg, mode, launching=not dry_run)
    if not dry_run and gpus and gpus != world:
        problems.append(f"--gpus {gpus} but torchrun started WORLD_SIZE={world} processes")
    try:
        warnings = check_layout(layout, arch, pattern=cfg.model.hybrid_layer_pattern, precision=cfg.model.precision,
                                allow_precision_fallback=cfg.model.allow_precision_fallback,
                                check_hardware=not dry_run)
    except LayoutError as exc:
        raise LayoutError(exc.problems + problems) from None
    if problems:
        raise LayoutError(problems)
    return cfg, layout, _validated_arch(cfg), warnings


def _adopt_checkpoint_architecture(cfg: Any, overrides: list[str]) -> None:
    """Fine-tuning a checkpoint written by ``convert import``: the model's shape is the checkpoint's
    (its ``nemotron3_super.json`` holds the HF config), so ``checkpoint.pretrained_checkpoint=`` alone
    is enough for any Super/Nano-shaped model. A ``model.<field>=`` override that contradicts it is an
    error naming both values; other checkpoints (the host's own) leave the recipe's model as it is."""
    import json
    from pathlib import Path

    from nemotron3_super.architecture import SuperArchitecture
    from nemotron3_super.provider import ARCH_FIELDS, SuperModelProvider

    path = getattr(cfg.checkpoint, "pretrained_checkpoint", None)
    meta = Path(path) / "nemotron3_super.json" if path else None
    if meta is None or not meta.is_file() or not isinstance(cfg.model, SuperModelProvider):
        return
    try:
        arch = SuperArchitecture.from_hf_config(json.loads(meta.read_text())["hf_config"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{meta}: cannot read the checkpoint's architecture ({exc})") from None
    wanted = SuperModelProvider.from_architecture(arch)
    wanted.validate()
    shape_fields = {"hybrid_override_pattern", "mtp_num_layers", "mtp_use_repeated_layer"} | {
        pf for pf, _ in ARCH_FIELDS if pf != "seq_length"}  # what the checkpoint's shape decides
    given = [o.split("=", 1)[0].lstrip("+~").removeprefix("model.") for o in overrides
             if o.lstrip("+~").startswith("model.")]
    expected = {k: getattr(wanted, k, None) for k in shape_fields}
    expected["hybrid_override_pattern"] = arch.hybrid_override_pattern  # HF spelling, as typed on the CLI
    clashes = [f"model.{k}={getattr(cfg.model, k)!r} (checkpoint: {expected[k]!r})" for k in given
               if k in shape_fields and getattr(cfg.model, k, None) != expected[k]]
    if clashes:
        raise ValueError(f"{path} was converted from a different model shape than the override(s) "
                         + ", ".join(clashes) + "; drop them (the shape comes from the checkpoint)")
    try:
        same = cfg.model.to_architecture() == arch
    except ValueError:
        same = False
    if not same:
        cfg.model.set_architecture(arch)


def _recipe_gpus(name: str) -> int:
    from nemotron3_super.recipes import layout as layouts

    default = {"pretrain": layouts.PRETRAIN_LAYOUT, "sft": layouts.SFT_LAYOUT, "peft": layouts.LORA_LAYOUT}
    return default[RECIPES[name].mode].gpus
