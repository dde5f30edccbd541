"""The named builders every Nemotron 3 Super recipe composes: model, optimizer + schedule, data,
tokenizer, run (checkpoint / logging / DDP), then :func:`assemble`. Each setting lives in exactly
one builder; a recipe is a call per builder and a variant is a short diff on a built config.

Nothing here touches a hub or the network: the model comes from the packaged config.json, dataset
and tokenizer names are stored as strings and resolved only when training starts.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from megatron.bridge.data.builders import GPTSFTDatasetConfig
from megatron.bridge.data.sources.hf import HFDatasetSourceConfig
from megatron.bridge.peft.lora import LoRA
from megatron.bridge.recipes.utils.dataset_utils import default_squad_config
from megatron.bridge.training.config import (
    CheckpointConfig, ConfigContainer, DistributedDataParallelConfig, DistributedInitConfig,
    GPTDatasetConfig, LoggerConfig, OptimizerConfig, RNGConfig, SchedulerConfig, TokenizerConfig,
    TrainingConfig, ValidationConfig)
from megatron.bridge.training.mixed_precision import bf16_mixed
from megatron.core.datasets.utils import get_blend_from_list

from nemotron3_super.architecture import SuperArchitecture, load_json, super_120b_a12b
from nemotron3_super.provider import SuperModelProvider
from nemotron3_super.recipes.layout import Layout

# Same tokenizer for every Nemotron 3 model (131,072 tokens); an HF id or a local directory,
# loaded by the host only when training starts.
TOKENIZER = "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16"
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj", "out_proj")
WSD_DECAY_FRACTION = 0.2  # WSD anneals over the last 20% of iterations (our choice; FACTS: "WSD")
BLEND_SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------- model
def build_model(model: SuperModelProvider | SuperArchitecture | None, layout: Layout,
                **fields: Any) -> SuperModelProvider:
    """A provider for ``model`` (default: released 120B-A12B) split as ``layout``.

    MoE routing (sigmoid + aux-loss-free bias at 1e-3, load-balancing loss 1e-4) and MTP (2 depths,
    loss scale 0.3) are the provider's own defaults: recipes do not restate them. A provider passed
    in is copied, never modified. ``fields`` are extra provider settings (recompute, loss mode).
    """
    if model is None or isinstance(model, SuperArchitecture):
        provider = SuperModelProvider.from_architecture(model or super_120b_a12b())
    elif isinstance(model, SuperModelProvider):
        provider = copy.deepcopy(model)
    else:
        raise TypeError(f"model={type(model).__name__}: expected a SuperModelProvider, a "
                        "SuperArchitecture or None (released 120B-A12B)")
    fields = dict(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        context_parallel_size=layout.cp, expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.etp, sequence_parallel=layout.sp,
        seq_length=layout.seq_length, pipeline_dtype=torch.bfloat16, **fields)
    for name, value in fields.items():
        if not hasattr(provider, name):
            raise AttributeError(f"SuperModelProvider has no field {name!r}")
        setattr(provider, name, value)
    return provider


# --------------------------------------------------------------------- optimizer and schedule
def build_optimizer(lr: float, min_lr: float, *, train_iters: int, warmup_iters: int,
                    schedule: str = "WSD") -> tuple[OptimizerConfig, SchedulerConfig]:
    """AdamW (0.9, 0.95), wd 0.1, clip 1.0, distributed optimizer; ``schedule`` "WSD" or "cosine"."""
    optimizer = OptimizerConfig(
        optimizer="adam",  # megatron's Adam applies weight decay decoupled, i.e. AdamW
        lr=lr, min_lr=min_lr, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8,
        clip_grad=1.0, bf16=True, use_distributed_optimizer=True)
    scheduler = SchedulerConfig(
        lr_decay_style=schedule, lr_wsd_decay_style="linear", lr_warmup_init=0.0,
        start_weight_decay=0.1, end_weight_decay=0.1, weight_decay_incr_style="constant")
    fit_schedule(scheduler, train_iters, warmup_iters)
    return optimizer, scheduler


def fit_schedule(scheduler: SchedulerConfig, train_iters: int, warmup_iters: int) -> None:
    """Stretch the schedule over ``train_iters``: warmup (at most 10% of the run), then for WSD a
    stable phase and a decay over the last :data:`WSD_DECAY_FRACTION` of the iterations."""
    scheduler.lr_decay_iters = train_iters
    scheduler.lr_warmup_iters = min(warmup_iters, max(1, train_iters // 10))
    if scheduler.lr_decay_style == "WSD":
        scheduler.lr_wsd_decay_iters = max(1, math.ceil(WSD_DECAY_FRACTION * train_iters))


# ------------------------------------------------------------------------------------- data
def read_blend_json(path: str | Path) -> list[Any]:
    """``blend_per_split`` from a per-split JSON: ``{"train": [...], "valid": [...], "test": [...]}``,
    each a list of prefixes or of ``weight, prefix`` pairs (or one space-separated string).
    A missing or empty split means "no dataset for it". Local prefixes must have .bin and .idx."""
    path = Path(path)
    spec = load_json(path, "data blend JSON")
    unknown = sorted(set(spec) - set(BLEND_SPLITS)) if isinstance(spec, dict) else None
    if unknown is None or unknown or not spec.get("train"):
        raise ValueError(f"{path}: expected an object with a non-empty 'train' list and optional "
                         f"'valid' / 'test' lists (unknown keys: {unknown})")
    blends = []
    for split in BLEND_SPLITS:
        items = spec.get(split) or None
        items = items.split() if isinstance(items, str) else items
        blend = get_blend_from_list([str(i) for i in items]) if items else None
        for prefix in (blend[0] if blend else []):
            missing = [s for s in (".bin", ".idx") if "://" not in prefix and not os.path.exists(prefix + s)]
            if missing:
                raise FileNotFoundError(f"{path}: {split} dataset prefix {prefix!r} has no "
                                        f"{' / '.join(prefix + s for s in missing)}")
        blends.append(blend)
    return blends


def pretrain_data(layout: Layout, per_split_data_args_path: str | Path | None = None) -> GPTDatasetConfig:
    """Megatron indexed data from a per-split blend JSON; mock data when none is given."""
    blend_per_split = read_blend_json(per_split_data_args_path) if per_split_data_args_path else None
    return GPTDatasetConfig(
        seq_length=layout.seq_length, blend=None, blend_per_split=blend_per_split,
        split=None if blend_per_split else "9999,8,2",  # mock: megatron-core needs a split
        random_seed=1234, reset_attention_mask=False, reset_position_ids=False, eod_mask_loss=False,
        num_dataset_builder_threads=1, data_sharding=True, dataloader_type="single",
        skip_getting_attention_mask_from_dataset=True)


def squad_data(layout: Layout, squad_jsonl: str | Path | None = None) -> GPTSFTDatasetConfig:
    """SQuAD with packed sequences (the host's config); ``squad_jsonl`` swaps the Hub dataset for a
    local JSONL of SQuAD rows (context, question, answers.text) read by the same schema adapter."""
    data = default_squad_config(seq_length=layout.seq_length, enable_offline_packing=True,
                                pad_seq_to_mult=2 * layout.cp if layout.cp > 1 else 1)
    if squad_jsonl is not None:
        path = Path(squad_jsonl).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"SQuAD JSONL not found: {path}")
        data.hf_dataset = HFDatasetSourceConfig(path_or_dataset="json", split="train", schema_adapter="squad",
                                                load_kwargs={"data_files": str(path)})
    return data


def build_tokenizer(arch: SuperArchitecture, tokenizer_model: str | None, *, real_text: bool) -> TokenizerConfig:
    """Mock data needs no real tokenizer (NullTokenizer over the model's vocab); text needs one."""
    if not real_text and tokenizer_model is None:
        return TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=arch.vocab_size)
    return TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=tokenizer_model or TOKENIZER,
                           use_tokenizer_vocab_size=False)  # keep the model's 131,072-row embedding


def build_lora(rank: int = 32, alpha: int = 32) -> LoRA:
    """LoRA on attention, MLP/expert and Mamba in/out projections (the latent projections stay frozen)."""
    return LoRA(target_modules=list(LORA_TARGETS), dim=rank, alpha=alpha, dropout=0.0)


# -------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class RunSettings:
    """Checkpoint, evaluation and logging cadence of one mode (iterations)."""

    save_interval: int
    eval_interval: int
    eval_iters: int
    log_interval: int
    seed: int
    grad_reduce_in_fp32: bool  # False: bf16 grad buffer + reduction (full-parameter runs; memory)


RUNS = {
    "pretrain": RunSettings(save_interval=2000, eval_interval=2000, eval_iters=32, log_interval=10, seed=1234,
                            grad_reduce_in_fp32=False),
    "sft": RunSettings(save_interval=200, eval_interval=100, eval_iters=32, log_interval=10, seed=5678,
                       grad_reduce_in_fp32=False),
    "peft": RunSettings(save_interval=200, eval_interval=100, eval_iters=32, log_interval=10, seed=5678,
                        grad_reduce_in_fp32=True),  # adapters only: fp32 grads cost ~nothing
}


def assemble(mode: str, name: str, *, model: SuperModelProvider, layout: Layout, optimizer: OptimizerConfig,
             scheduler: SchedulerConfig, dataset: Any, tokenizer: TokenizerConfig, train_iters: int,
             output_dir: str | Path | None = None, pretrained_checkpoint: str | None = None) -> ConfigContainer:
    """The ConfigContainer of a ``mode`` ("pretrain" / "sft" / "peft") run named ``name``."""
    run = RUNS[mode]
    out = Path(output_dir) if output_dir else Path.cwd() / "nemo_experiments" / name
    mixed = bf16_mixed()
    mixed.grad_reduce_in_fp32 = run.grad_reduce_in_fp32  # setup() copies this onto cfg.ddp
    return ConfigContainer(
        model=model,
        train=TrainingConfig(train_iters=train_iters, global_batch_size=layout.gbs, micro_batch_size=layout.mbs,
                             manual_gc=True, manual_gc_interval=100),
        validation=ValidationConfig(eval_interval=run.eval_interval, eval_iters=run.eval_iters),
        optimizer=optimizer, scheduler=scheduler, dataset=dataset, tokenizer=tokenizer,
        # Overlap off: keeps DDP collectives ordered with PP / expert all-to-all and checkpoint saves
        # (the host's tested setting for this model).
        ddp=DistributedDataParallelConfig(check_for_nan_in_grad=True, grad_reduce_in_fp32=run.grad_reduce_in_fp32,
                                          overlap_grad_reduce=False, overlap_param_gather=False,
                                          average_in_collective=mode == "pretrain", use_distributed_optimizer=True),
        logger=LoggerConfig(log_interval=run.log_interval, tensorboard_dir=str(out / "tb_logs"),
                            log_timers_to_tensorboard=True),
        checkpoint=CheckpointConfig(save_interval=run.save_interval, save=str(out / "checkpoints"),
                                    load=str(out / "checkpoints"), pretrained_checkpoint=pretrained_checkpoint,
                                    ckpt_format="torch_dist", fully_parallel_save=True),
        rng=RNGConfig(seed=run.seed), dist=DistributedInitConfig(), mixed_precision=mixed)
