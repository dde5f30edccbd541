"""Layout validation and the memory estimate: stdlib only, no host import (fast)."""

from __future__ import annotations

import dataclasses

import pytest

from nemotron3_super import precision
from nemotron3_super.architecture import super_120b_a12b, tiny_super
from nemotron3_super.recipes import RECIPES
from nemotron3_super.recipes.layout import (LORA_LAYOUT, PRETRAIN_LAYOUT, SFT_LAYOUT, Layout, LayoutError,
                                            check_layout)
from nemotron3_super.recipes.memory import GIB, MemorySettings, estimate_memory

SUPER = super_120b_a12b()
LORA = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj", "out_proj")


def test_default_layouts_match_facts_and_pass() -> None:
    assert (PRETRAIN_LAYOUT.gpus, PRETRAIN_LAYOUT.tp, PRETRAIN_LAYOUT.pp, PRETRAIN_LAYOUT.ep) == (64, 1, 2, 32)
    assert (PRETRAIN_LAYOUT.seq_length, PRETRAIN_LAYOUT.gbs, PRETRAIN_LAYOUT.mbs) == (4096, 1280, 1)
    # GBS 1280 = MBS 1 x DP 32 x GA 40; EP32 re-partitions DP32, so each expert has one replica
    assert (PRETRAIN_LAYOUT.dp, PRETRAIN_LAYOUT.grad_accum, PRETRAIN_LAYOUT.edp) == (32, 40, 1)
    assert (SFT_LAYOUT.tp, SFT_LAYOUT.ep, SFT_LAYOUT.sp) == (8, 16, True)
    for layout in (PRETRAIN_LAYOUT, SFT_LAYOUT, LORA_LAYOUT):
        assert check_layout(layout, SUPER) == []
    assert "GBS 1280 = MBS 1 x DP 32 x GA 40" in PRETRAIN_LAYOUT.describe()


def test_recipe_table_has_every_mode() -> None:
    assert {info.mode for info in RECIPES.values()} == {"pretrain", "sft", "peft"}
    assert all(info.target.startswith("nemotron3_super.recipes.factories:") for info in RECIPES.values())


INVALID = {  # id: (layout, architecture, message fragment)
    "world-not-multiple-of-tp-pp-cp": (Layout(gpus=63, pp=2, ep=1, gbs=63), SUPER,
                                       "world size 63 is not a multiple of TP x PP x CP = 1 x 2 x 1 = 2"),
    "ep-does-not-divide-dp": (Layout(gpus=32, pp=2, ep=32, gbs=32), SUPER,
                              "EP x ETP = 32 x 1 must divide TP x CP x DP = 1 x 1 x 16 = 16"),
    "experts-not-divisible-by-ep": (Layout(gpus=48, ep=24, gbs=48), SUPER,
                                    "n_routed_experts=512 is not divisible by ep=24"),
    "attention-heads-by-tp": (Layout(gpus=3, tp=3, sp=True, gbs=1), SUPER,
                              "num_attention_heads=32 is not divisible by tp=3"),
    "mamba-groups-by-tp": (Layout(gpus=16, tp=16, sp=True, gbs=1), SUPER,
                           "n_groups=8 is not divisible by tp=16"),
    "mamba-heads-by-tp": (Layout(gpus=4, tp=4, sp=True, gbs=1),
                          dataclasses.replace(tiny_super(), mamba_num_heads=6),
                          "mamba_num_heads=6 is not divisible by tp=4"),
    "gbs-by-mbs-times-dp": (dataclasses.replace(PRETRAIN_LAYOUT, gbs=1000), SUPER,
                            "global batch 1000 is not divisible by micro batch x data parallel = 1 x 32 = 32"),
    "sequence-parallel-without-tp": (dataclasses.replace(PRETRAIN_LAYOUT, sp=True), SUPER,
                                     "sequence parallel needs tensor parallelism"),
    "context-parallel-seq": (Layout(gpus=3, cp=3, seq_length=4096, gbs=1), SUPER,
                             "seq length 4096 is not divisible by 2 x CP = 6"),
    "pipeline-layer-split": (Layout(gpus=3, pp=3, gbs=1), SUPER, "88 layers do not split evenly over PP=3"),
}


@pytest.mark.parametrize("layout, arch, message", list(INVALID.values()), ids=list(INVALID))
def test_invalid_layout_raises_its_message(layout: Layout, arch, message: str) -> None:
    with pytest.raises(LayoutError) as info:
        check_layout(layout, arch)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(LayoutError) as info:
        check_layout(Layout(gpus=8, pp=2, ep=32, sp=True, gbs=1280), SUPER)
    assert len(info.value.problems) == 2  # EP and SP, one line each
    assert "with 8 GPUs EP can be one of [1, 2, 4]" in str(info.value)


def test_nvfp4_on_non_blackwell(monkeypatch: pytest.MonkeyPatch) -> None:
    hopper = "the GPU is NVIDIA H100 80GB HBM3 (compute capability 9.0), not Blackwell (compute capability 10.x)"
    monkeypatch.setattr(precision, "nvfp4_unsupported_reason", lambda: hopper)
    with pytest.raises(LayoutError, match="precision=nvfp4 cannot run here: the GPU is NVIDIA H100"):
        check_layout(PRETRAIN_LAYOUT, SUPER, precision="nvfp4", allow_precision_fallback=False, check_hardware=True)
    warnings = check_layout(PRETRAIN_LAYOUT, SUPER, precision="nvfp4", check_hardware=True)
    assert warnings == [f"precision=nvfp4 cannot run here ({hopper}): this run trains in BF16"]
    dry = check_layout(PRETRAIN_LAYOUT, SUPER, precision="nvfp4")  # dry run: no hardware probe
    assert "Blackwell" in dry[0] and "falls back to BF16" in dry[0]
    monkeypatch.setattr(precision, "nvfp4_unsupported_reason", lambda: None)
    assert check_layout(PRETRAIN_LAYOUT, SUPER, precision="nvfp4", check_hardware=True) == []


def test_ep_with_tp_without_sp_is_a_warning() -> None:
    warnings = check_layout(Layout(gpus=16, tp=8, ep=2, gbs=2), SUPER)
    assert any("sequence parallelism" in w for w in warnings)


# ---------------------------------------------------------------------------------- memory
def test_memory_on_one_gpu_counts_the_whole_model() -> None:
    est = estimate_memory(SUPER, Layout(gpus=1, seq_length=8, gbs=1), MemorySettings())
    (stage,) = est.stages
    assert stage.params == pytest.approx(SUPER.param_counts().total, rel=1e-6)
    assert stage.weights == pytest.approx(2 * stage.params)  # bf16
    assert stage.optimizer == pytest.approx(12 * stage.params)  # fp32 main + 2 moments, DP 1


def test_memory_shards_experts_by_ep_and_optimizer_by_dp() -> None:
    est = estimate_memory(SUPER, PRETRAIN_LAYOUT, MemorySettings(grad_bytes=2))
    experts_per_layer = 512 * 2 * 2688 * 1024
    last = est.stages[-1]
    assert last.pattern.count("E") == 20
    assert last.params > 21 * experts_per_layer / 32  # 20 backbone MoE layers + MTP's, over EP32
    assert est.stages[0].in_flight == 2 and last.in_flight == 1  # 1F1B with PP2
    assert last.transient > 0  # bf16 grads: fp32 copy of the grad shard at the optimizer step


def test_recompute_and_lora_reduce_memory() -> None:
    none, moe, full = (estimate_memory(SUPER, PRETRAIN_LAYOUT, MemorySettings(recompute=r, recompute_modules=m))
                       for r, m in ((None, ()), ("selective", ("moe",)), ("full", ())))
    assert none.stages[0].activations > moe.stages[0].activations > full.stages[0].activations
    lora = estimate_memory(SUPER, LORA_LAYOUT, MemorySettings(lora_rank=32, lora_targets=LORA)).stages[0]
    assert lora.trainable < 0.01 * lora.params and lora.optimizer < 1 * GIB


def test_default_layouts_fit_80gib_with_the_recipe_settings() -> None:
    pretrain = MemorySettings(grad_bytes=2, recompute="selective", recompute_modules=("moe",))
    assert estimate_memory(SUPER, PRETRAIN_LAYOUT, pretrain).peak < 80 * GIB
    assert estimate_memory(SUPER, SFT_LAYOUT, MemorySettings(grad_bytes=2)).peak < 80 * GIB
    assert estimate_memory(SUPER, dataclasses.replace(SFT_LAYOUT, gpus=32),
                           MemorySettings(grad_bytes=2)).peak > 80 * GIB  # why SFT uses 64 GPUs
    table = estimate_memory(SUPER, PRETRAIN_LAYOUT, pretrain).table()
    for row in ("weights (bf16)", "gradients (bf16 buffer)", "optimizer", "activations", "total (peak)"):
        assert row in table
