"""A launch's inputs checked before anything starts (#12 cases 15 and 16), through the launch module's CLI in
this process: override values against the config's annotations and ranges, ``--gpus``, a pretrained checkpoint
that is not there, a logger whose package is missing. Each problem is one line; all of them are reported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds the 120B recipe (host import, ~15 s once)


@pytest.fixture(scope="module")
def main():  # noqa: ANN201 - the launch modules' entry
    from nemotron3_super.launch import main as launch_main

    return launch_main


@pytest.mark.parametrize(("overrides", "lines"), [
    (["train.train_iters=abc"], ["train.train_iters=abc: got 'abc', expected an integer (TrainingConfig.train_iters)"]),
    # a scheduler override once made the bad value pass unnoticed
    (["train.train_iters=abc", "scheduler.lr_warmup_iters=5"], ["train.train_iters=abc: got 'abc', expected an integer"]),
    (["optimizer.lr=abc"], ["optimizer.lr=abc: got 'abc', expected a number (OptimizerConfig.lr)"]),
    (["model.sequence_parallel=maybe"], ["model.sequence_parallel=maybe: got 'maybe', expected true or false"]),
    (["train.train_iters=-5", "train.train_iters=0"], ["train.train_iters=-5: got -5, expected > 0 (training iterations)",
                                                        "train.train_iters=0: got 0, expected > 0"]),
    (["optimizer.lr=-1", "optimizer.adam_beta2=1.5"], ["optimizer.lr=-1: got -1, expected >= 0 (a learning rate)",
                                                       "optimizer.adam_beta2=1.5: got 1.5, expected in [0, 1)"]),
    (["model.tensor_model_parallel_size=0"], ["model.tensor_model_parallel_size=0: got 0, expected >= 1"]),
])
def test_override_values_are_checked_one_line_each(main, capsys: pytest.CaptureFixture, overrides: list[str],
                                                   lines: list[str]) -> None:
    assert main("pretrain", ["--dry-run", *overrides]) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == len(lines), err
    for line, expected in zip(problems, lines):
        assert line.startswith(f"  - {expected}"), err


def test_valid_values_pass(main, capsys: pytest.CaptureFixture) -> None:
    assert main("pretrain", ["--dry-run", "train.train_iters=100", "optimizer.lr=3e-4", "optimizer.min_lr=0",
                             "model.sequence_parallel=true", "model.tensor_model_parallel_size=2",
                             "train.global_batch_size=1280"]) == 0
    assert "of 100 iters" in capsys.readouterr().out


@pytest.mark.parametrize(("value", "message"), [("0", "argument --gpus: '0' is not above 0"),
                                                ("-8", "argument --gpus: '-8' is not above 0"),
                                                ("x", "argument --gpus: invalid int value: 'x'")])
def test_gpus_must_be_a_positive_integer(main, capsys: pytest.CaptureFixture, value: str, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main("pretrain", ["--dry-run", "--gpus", value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_dry_run_names_a_missing_or_wrong_pretrained_checkpoint(main, capsys: pytest.CaptureFixture,
                                                                tmp_path: Path) -> None:
    missing, empty = tmp_path / "nope", tmp_path / "empty"
    empty.mkdir()
    for folder, why in ((missing, "no such folder"), (empty, "not a Megatron checkpoint (no iter_*/")):
        assert main("finetune", ["--dry-run", f"checkpoint.pretrained_checkpoint={folder}"]) == 2
        assert f"checkpoint.pretrained_checkpoint='{folder}': {why}" in capsys.readouterr().err


def test_dry_run_names_wandb_when_it_is_not_installed(main, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable, whatever this machine has
    assert main("pretrain", ["--dry-run", "logger.wandb_project=super-pretrain"]) == 2
    assert ("logger.wandb_project='super-pretrain' logs to Weights & Biases, but the wandb package is not "
            "installed here: pip install wandb") in capsys.readouterr().err
