"""Shared launcher behind ``python -m nemotron3_super.pretrain`` and ``... .finetune``: the orchestration.

Flow: build the recipe (offline) -> apply dotted overrides (``recipes/overrides.py``) -> check the layout
against megatron-core's rules -> either print the plan and a per-GPU memory estimate (``--dry-run``,
``recipes/dry_run.py``; no GPU touched) or import the host's training loop and run it. The training loop
is imported only here, at launch: it needs ``nvidia_resiliency_ext.inprocess``, which recipe building
and dry runs must not.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from typing import Any

from nemotron3_super.recipes import RECIPES
from nemotron3_super.recipes.dry_run import config_problems, report, validated_arch
from nemotron3_super.recipes.layout import LayoutError, check_layout, layout_of
from nemotron3_super.recipes.overrides import ConfigKeyError, apply_cli_overrides, follow_train_iters
from nemotron3_super.upstream_flags import add_training_flags, training_overrides


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


def _positive(kind: type) -> Any:
    """An argparse type: a number of ``kind`` above 0 (argparse names the option and the value)."""
    def parse(text: str) -> Any:
        value = kind(text)  # ValueError: argparse says "invalid <kind> value"
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def _parser(mode: str) -> argparse.ArgumentParser:
    prog = f"python -m nemotron3_super.{'pretrain' if mode == 'pretrain' else 'finetune'}"
    what = ("Pretrain Nemotron 3 Super (mock data unless --data-blend)" if mode == "pretrain" else
            "Fine-tune Nemotron 3 Super on SQuAD: full SFT, or LoRA with --peft lora")
    p = argparse.ArgumentParser(prog=prog, description=f"{what}. --dry-run prints the plan and exits.",
                                epilog="Positional arguments are dotted overrides: model.num_layers=7 "
                                       "train.train_iters=100 (Hydra syntax; see docs/RECIPES.md).")
    p.add_argument("overrides", nargs="*", help="section.field=value")
    p.add_argument("--dry-run", action="store_true", help="print layout + memory estimate, then exit")
    p.add_argument("--gpus", type=_positive(int), help="dry run: world size to plan for (default: the recipe's); "
                                           "launch: must equal torchrun's WORLD_SIZE")
    p.add_argument("--gpu-memory-gib", type=_positive(float), default=80.0, help="per-GPU memory for the fit check")
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
    from nemotron3_super.plugins.host import replacements_reported_by_caller

    # a dry run's plan states the bridge decision: the host-import hook does not log it before the plan
    reported = replacements_reported_by_caller() if dry_run else contextlib.nullcontext()
    try:
        with reported:
            cfg, layout, arch, warnings = _prepare(name, list(overrides), recipe_kwargs, dry_run=dry_run, gpus=gpus)
            bridges = _bridge_plan() if dry_run else {}
    except (ValueError, ConfigKeyError, FileNotFoundError) as exc:  # LayoutError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        logging.disable(logging.NOTSET)
    if dry_run:
        print(report(name, cfg, layout, arch, warnings, gpu_memory_gib, bridges=bridges))
        return 0
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    launch(cfg, RECIPES[name].mode)
    return 0


def _bridge_plan() -> dict[str, str]:
    """What :func:`launch` installs into the host: architecture -> "bridge class (where it comes from)"."""
    from nemotron3_super.plugins.host import install_into_host

    installed = install_into_host()
    notes = installed.bridge_notes()
    return {arch: f"{bridge} ({notes[arch]}; policy {installed.bridge_policy!r})"
            for arch, bridge in sorted(installed.bridges.items())}


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
    follow_train_iters(cfg, overrides, warmup)
    arch = validated_arch(cfg, strict=False)
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
    return cfg, layout, validated_arch(cfg), warnings


def _adopt_checkpoint_architecture(cfg: Any, overrides: list[str]) -> None:
    """Fine-tuning a checkpoint written by ``convert import``: the model's shape is the checkpoint's
    (its ``nemotron3_super.json`` holds the HF config), so ``checkpoint.pretrained_checkpoint=`` alone
    is enough for any Super/Nano-shaped model. A ``model.<field>=`` override that contradicts it is an
    error naming both values; other checkpoints (the host's own) leave the recipe's model as it is."""
    import json
    from pathlib import Path

    from nemotron3_super.architecture import SuperArchitecture
    from nemotron3_super.conversion.megatron_io import META_FILE
    from nemotron3_super.provider import ARCH_FIELDS, SuperModelProvider

    path = getattr(cfg.checkpoint, "pretrained_checkpoint", None)
    meta = Path(path) / META_FILE if path else None
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
