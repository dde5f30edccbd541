"""Nemotron 3 Super recipes: pretrain, full SFT, LoRA (and an NVFP4 pretrain variant).

Each returns the host's ``ConfigContainer`` and builds offline. Numbers follow FACTS.md
("Training facts"); the layouts are in :mod:`nemotron3_super.recipes.layout` with their arithmetic.
"""

from __future__ import annotations

from pathlib import Path

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.recipes import builders as b
from nemotron3_super.recipes.layout import LORA_LAYOUT, PRETRAIN_LAYOUT, SFT_LAYOUT, Layout
from nemotron3_super.provider import SuperModelProvider

Model = SuperModelProvider | SuperArchitecture | None


def nemotron3_super_pretrain_config(*, model: Model = None, per_split_data_args_path: str | Path | None = None,
                                    tokenizer_model: str | None = None, train_iters: int = 300_000,
                                    layout: Layout = PRETRAIN_LAYOUT,
                                    output_dir: str | Path | None = None) -> b.ConfigContainer:
    """Pretraining: 64 GPUs TP1/PP2/EP32, seq 4096, GBS 1280, AdamW 4.5e-4 -> 4.5e-6 on a WSD schedule.

    Mock data unless ``per_split_data_args_path`` names a blend JSON (format: docs/RECIPES.md).
    """
    # Recompute each MoE block in backward (keeps only its input): ~3 GB instead of ~30 GB of
    # activations per micro batch at seq 4096 (see `--dry-run`).
    provider = b.build_model(model, layout, recompute_granularity="selective", recompute_modules=["moe"],
                             init_method_std=0.014)  # init as the host's Super recipes
    optimizer, scheduler = b.build_optimizer(4.5e-4, 4.5e-6, train_iters=train_iters, warmup_iters=2000,
                                             schedule="WSD")
    return b.assemble("pretrain", "nemotron3_super_pretrain", model=provider, layout=layout,
                      optimizer=optimizer, scheduler=scheduler,
                      dataset=b.pretrain_data(layout, per_split_data_args_path),
                      tokenizer=b.build_tokenizer(provider.to_architecture(), tokenizer_model,
                                                  real_text=per_split_data_args_path is not None),
                      train_iters=train_iters, output_dir=output_dir)


def nemotron3_super_pretrain_nvfp4_config(**kwargs) -> b.ConfigContainer:
    """The published NVFP4 recipe (last 14 layers, latent/QKV/out projections, MTP, embeddings BF16).

    Blackwell only: elsewhere the provider warns and trains in BF16 (launch validation says so).
    """
    cfg = nemotron3_super_pretrain_config(**kwargs)
    cfg.model.precision = "nvfp4"
    return cfg


def nemotron3_super_sft_config(*, model: Model = None, pretrained_checkpoint: str | None = None,
                               squad_jsonl: str | Path | None = None, tokenizer_model: str | None = None,
                               train_iters: int = 1000, layout: Layout = SFT_LAYOUT,
                               output_dir: str | Path | None = None) -> b.ConfigContainer:
    """Full SFT on SQuAD (packed, seq 2048): TP8/EP16 with sequence parallel, LR 5e-6 cosine.

    ``squad_jsonl`` reads a local SQuAD-format JSONL instead of the Hub dataset.
    """
    return _finetune("sft", model=model, pretrained_checkpoint=pretrained_checkpoint, squad_jsonl=squad_jsonl,
                     tokenizer_model=tokenizer_model, train_iters=train_iters, layout=layout,
                     output_dir=output_dir)


def nemotron3_super_lora_config(*, rank: int = 32, alpha: int = 32, layout: Layout = LORA_LAYOUT,
                                **kwargs) -> b.ConfigContainer:
    """LoRA (rank 32, alpha 32, LR 1e-4) on the SFT recipe; one 8-GPU node (frozen base, TP8/EP8).

    ``kwargs``: as :func:`nemotron3_super_sft_config` (``pretrained_checkpoint`` is required to launch).
    """
    cfg = _finetune("peft", layout=layout, **kwargs)
    cfg.peft = b.build_lora(rank, alpha)
    # TE-free spec: SequentialMLP experts, whose per-expert linear_fc1/fc2 the host's LoRA adapts (it has no
    # adapter for GroupedMLP's stacked weights); the TE spec's experts are grouped either way
    cfg.model.moe_grouped_gemm = False
    cfg.optimizer.lr = 1e-4  # adapters only: 20x the full-SFT rate
    return cfg


def _finetune(mode: str, *, model: Model = None, pretrained_checkpoint: str | None = None,
              squad_jsonl: str | Path | None = None, tokenizer_model: str | None = None,
              train_iters: int = 1000, layout: Layout = SFT_LAYOUT,
              output_dir: str | Path | None = None) -> b.ConfigContainer:
    """SQuAD fine-tuning shared by full SFT and LoRA (``mode`` picks the run settings)."""
    provider = b.build_model(model, layout, calculate_per_token_loss=True)  # packed rows: per-token mean
    optimizer, scheduler = b.build_optimizer(5e-6, 0.0, train_iters=train_iters, warmup_iters=50,
                                             schedule="cosine")
    return b.assemble(mode, f"nemotron3_super_{'lora' if mode == 'peft' else mode}", model=provider,
                      layout=layout, optimizer=optimizer, scheduler=scheduler,
                      dataset=b.squad_data(layout, squad_jsonl),
                      tokenizer=b.build_tokenizer(provider.to_architecture(), tokenizer_model, real_text=True),
                      train_iters=train_iters, output_dir=output_dir, pretrained_checkpoint=pretrained_checkpoint)
