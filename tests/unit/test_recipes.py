"""Every recipe builds offline and carries FACTS.md's numbers; dotted overrides behave."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from nemotron3_super.architecture import super_120b_a12b, tiny_super
from nemotron3_super.recipes import RECIPES
from nemotron3_super.recipes.layout import check_layout, layout_of

SUPER_PATTERN = "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME"
LORA_TARGETS = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj", "out_proj"]  # the published set

COMMON = {  # FACTS.md "Training facts", every mode
    "optimizer.optimizer": "adam", "optimizer.adam_beta1": 0.9, "optimizer.adam_beta2": 0.95,
    "optimizer.weight_decay": 0.1, "optimizer.use_distributed_optimizer": True,
    "model.hybrid_layer_pattern": SUPER_PATTERN, "model.hidden_size": 4096, "model.num_moe_experts": 512,
    "model.moe_router_enable_expert_bias": True, "model.moe_router_bias_update_rate": 1e-3,
    "model.moe_aux_loss_coeff": 1e-4, "model.mtp_loss_scaling_factor": 0.3, "model.mtp_num_layers": 2,
}
PRETRAIN = {
    "model.tensor_model_parallel_size": 1, "model.pipeline_model_parallel_size": 2,
    "model.expert_model_parallel_size": 32, "model.seq_length": 4096, "dataset.seq_length": 4096,
    "train.global_batch_size": 1280, "train.micro_batch_size": 1, "optimizer.lr": 4.5e-4,
    "optimizer.min_lr": 4.5e-6, "scheduler.lr_decay_style": "WSD", "dataset.blend": None,
    "dataset.blend_per_split": None, "model.precision": "bf16", "peft": None,
}
SFT = {
    "model.tensor_model_parallel_size": 8, "model.expert_model_parallel_size": 16,
    "model.sequence_parallel": True, "optimizer.lr": 5e-6, "dataset.hf_dataset.dataset_name": "squad",
    "peft": None,
}
EXPECTED = {
    "nemotron3_super_pretrain_config": PRETRAIN,
    "nemotron3_super_pretrain_nvfp4_config": {**PRETRAIN, "model.precision": "nvfp4"},
    "nemotron3_super_sft_config": SFT,
    "nemotron3_super_lora_config": {
        **SFT, "model.expert_model_parallel_size": 8, "optimizer.lr": 1e-4, "peft": None,
        "peft.target_modules": LORA_TARGETS, "peft.dim": 32, "peft.alpha": 32},
}
GPUS = {"pretrain": 64, "sft": 64, "peft": 8}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    """Any network attempt fails the test: recipes must build from packaged data only."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while building a recipe: {args[1:] or kwargs}")

    for target, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "getaddrinfo"),
                         (socket, "create_connection")):
        monkeypatch.setattr(target, name, refuse)


@pytest.fixture(scope="module")
def recipes():
    from nemotron3_super import recipes as module
    from nemotron3_super.recipes import factories  # noqa: F401 - makes the host importable first

    return module


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_builds_offline_with_facts(recipes, offline, name: str) -> None:
    from megatron.bridge.training.config import ConfigContainer

    cfg = getattr(recipes, name)()
    assert isinstance(cfg, ConfigContainer)
    for key, value in {**COMMON, **EXPECTED[name]}.items():
        if key == "peft" and "peft.dim" in EXPECTED[name]:
            continue
        assert _get(cfg, key) == value, key
    arch = cfg.model.to_architecture()
    released = super_120b_a12b()  # the packaged config, not a Hub download; the provider reports the
    # training seq_length as max_position_embeddings, so compare everything else
    assert dataclasses.replace(arch, max_position_embeddings=released.max_position_embeddings) == released
    layout = layout_of(cfg, GPUS[RECIPES[name].mode])
    check_layout(layout, arch, precision="bf16")  # each default layout is valid for 120B
    assert cfg.model.seq_length == cfg.dataset.seq_length


def test_pretrain_schedule_is_warmup_stable_decay(recipes) -> None:
    cfg = recipes.nemotron3_super_pretrain_config(train_iters=1000)
    s = cfg.scheduler
    assert (s.lr_warmup_iters, s.lr_decay_iters, s.lr_wsd_decay_iters) == (100, 1000, 200)
    assert s.lr_warmup_iters + s.lr_wsd_decay_iters < s.lr_decay_iters  # a stable phase exists


def test_model_and_architecture_overrides(recipes) -> None:
    cfg = recipes.nemotron3_super_pretrain_config(model=tiny_super())
    assert cfg.model.hidden_size == 128 and cfg.model.pipeline_model_parallel_size == 2
    provider = recipes.nemotron3_super_sft_config().model
    cfg = recipes.nemotron3_super_lora_config(model=provider)
    assert cfg.model is not provider and cfg.model.expert_model_parallel_size == 8
    assert provider.expert_model_parallel_size == 16  # the caller's provider is not modified


def test_tiny_recipes_pass_the_hosts_own_validation(recipes) -> None:
    """cfg.validate() is what the host runs first in pretrain()/finetune() (world size 1 here)."""
    from nemotron3_super.recipes.layout import Layout

    one_gpu = Layout(gpus=1, seq_length=64, gbs=2)
    for name in RECIPES:
        kwargs = {} if RECIPES[name].mode == "pretrain" else {"pretrained_checkpoint": "/tmp"}
        cfg = getattr(recipes, name)(model=tiny_super(), layout=one_gpu, train_iters=10, **kwargs)
        if cfg.model.precision == "nvfp4":
            cfg.model.precision = "bf16"  # no Blackwell here (the fallback path has its own tests)
        cfg.validate()
        assert cfg.scheduler.lr_decay_steps == 10 * 2  # samples


# ---------------------------------------------------------------------------------- overrides
def test_dotted_overrides_apply_and_revalidate(recipes) -> None:
    from nemotron3_super.recipes.dry_run import validated_arch
    from nemotron3_super.recipes.overrides import apply_cli_overrides

    cfg = recipes.nemotron3_super_pretrain_config()
    apply_cli_overrides(cfg, ['model.hybrid_override_pattern="MEME*ME"', "model.num_layers=7",
                              "train.train_iters=100", "+env_vars.NCCL_DEBUG=INFO"])
    arch = validated_arch(cfg)
    assert arch.hybrid_override_pattern == "MEME*ME" and cfg.train.train_iters == 100
    assert cfg.env_vars == {"NCCL_DEBUG": "INFO"}


@pytest.mark.parametrize("override, suggestion", [
    ("model.hybrid_override_patern=MEME", "model.hybrid_override_pattern"),
    ("train.train_iter=5", "train.train_iters"),
    ("optimizer.adam_beta=0.9", "optimizer.adam_beta1"),
    ("+model.num_layer=7", "model.num_layers"),  # '+' would add a key the host then ignores
])
def test_unknown_override_key_suggests_closest(recipes, override: str, suggestion: str) -> None:
    from nemotron3_super.recipes.overrides import ConfigKeyError, apply_cli_overrides

    cfg = recipes.nemotron3_super_pretrain_config()
    with pytest.raises(ConfigKeyError, match=f"unknown config key .*did you mean .*'{suggestion}'"):
        apply_cli_overrides(cfg, [override])


def test_train_iters_override_stretches_the_schedule(recipes) -> None:
    from nemotron3_super.recipes.overrides import apply_cli_overrides, follow_train_iters

    cfg = recipes.nemotron3_super_pretrain_config()
    apply_cli_overrides(cfg, ["train.train_iters=100"])
    follow_train_iters(cfg, ["train.train_iters=100"], 2000)
    s = cfg.scheduler
    assert (s.lr_decay_iters, s.lr_warmup_iters, s.lr_wsd_decay_iters) == (100, 10, 20)


def test_config_problems(recipes) -> None:
    from nemotron3_super.recipes.dry_run import config_problems

    cfg = recipes.nemotron3_super_lora_config()
    assert config_problems(cfg, "finetune", launching=False) == []
    assert "checkpoint.pretrained_checkpoint" in config_problems(cfg, "finetune", launching=True)[0]
    cfg.model.seq_length = 4096
    assert "dataset.seq_length=2048" in config_problems(cfg, "finetune", launching=False)[0]
