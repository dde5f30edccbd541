"""NeMo-Run finds every recipe through the `nemo_run.cli` entry point, and the Partial it returns runs."""

from __future__ import annotations

import importlib.metadata

import pytest

from nemotron3_super.recipes import RECIPES

pytestmark = pytest.mark.slow


def test_entry_point_declared() -> None:
    eps = {e.name: e.value for e in importlib.metadata.entry_points(group="nemo_run.cli")}
    assert eps["nemotron3_super"] == "nemotron3_super.recipes.nemo_run_cli"


def test_nemo_run_resolves_every_recipe_and_the_task_builds(capsys: pytest.CaptureFixture[str]) -> None:
    import fiddle as fdl
    import nemo_run as run

    from nemotron3_super.launch import run_recipe

    found = sorted(f.__name__ for f in run.cli.list_factories("nemotron3_super"))
    assert found == sorted(RECIPES)
    task = run.cli.resolve_factory("nemotron3_super", "nemotron3_super_pretrain_config")()
    assert isinstance(task, run.Partial) and task.name == "nemotron3_super_pretrain_config"
    task.overrides = ["model.hybrid_override_pattern=MEME*ME", "model.num_layers=7", "train.train_iters=100",
                      "model.pipeline_model_parallel_size=1", "model.expert_model_parallel_size=8"]
    task.dry_run = True
    task.gpus = 8
    call = fdl.build(task)
    assert call.func is run_recipe
    assert call() == 0
    out = capsys.readouterr().out
    assert "layout: 8 GPUs = TP1 x PP1 x CP1 x DP8; experts EP8" in out
    assert "7 layers (3 Mamba-2, 3 MoE, 1 attention)" in out
