"""The launch modules end to end on CPU: 120B dry runs, real data files (a tiny
indexed dataset, a local SQuAD JSONL), CLI errors, and the missing-training-loop message."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import launching
import pytest

pytestmark = pytest.mark.slow


def _dry_run(mode: str, *args: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    """``python -m nemotron3_super.<mode> ARGS --dry-run``, in this process (the docs test runs the same dry
    runs as separate processes, as README and docs/RECIPES.md write them)."""
    code, out, err = launching.dry_run(mode, [*args, "--dry-run"], capsys, monkeypatch)
    assert code == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def recipes():
    from nemotron3_super import recipes as module
    from nemotron3_super.recipes import factories  # noqa: F401 - makes the host importable first

    return module


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args[1:] or kwargs}")

    for target, name in ((socket.socket, "connect"), (socket, "getaddrinfo"), (socket, "create_connection")):
        monkeypatch.setattr(target, name, refuse)


def test_pretrain_dry_run_120b_prints_layout_and_memory_table(capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = _dry_run("pretrain", capsys=capsys, monkeypatch=monkeypatch)
    assert "123.61B params" in out
    assert "layout: 64 GPUs = TP1 x PP2 x CP1 x DP32; experts EP32 x ETP1 x EDP1" in out
    assert "GBS 1280 = MBS 1 x DP 32 x GA 40" in out
    assert "WSD, warmup 2000, stable, linear decay over the last 60000 of 300000 iters" in out
    for row in ("stage 0", "stage 1", "weights (bf16)", "gradients (bf16 buffer)", "optimizer (4+4+4 B/param",
                "activations", "total (peak)", "fits in 80 GiB"):
        assert row in out, row


def test_lora_dry_run_120b(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _dry_run("finetune", "--peft", "lora", capsys=capsys, monkeypatch=monkeypatch)
    assert "layout: 8 GPUs = TP8 x PP1 x CP1 x DP1; experts EP8 x ETP1 x EDP1; SP on" in out
    assert "LoRA rank 32, alpha 32, targets linear_qkv, linear_proj, linear_fc1, linear_fc2, in_proj, out_proj" in out
    assert "total (peak)" in out and "fits in 80 GiB" in out


def test_cli_errors_name_the_fix(recipes, capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.launch import main

    assert main("pretrain", ["--dry-run", "model.hybrid_override_patern=MEME"]) == 2
    assert "did you mean 'model.hybrid_override_pattern'" in capsys.readouterr().err
    # sizes the user set are kept as given, so a layout that cannot start names every problem
    assert main("pretrain", ["--dry-run", "--gpus", "8", 'model.hybrid_override_pattern="MEME*ME"',
                             "model.num_layers=7", "model.pipeline_model_parallel_size=2",
                             "model.expert_model_parallel_size=32"]) == 2
    err = capsys.readouterr().err
    assert "EP x ETP = 32 x 1 must divide TP x CP x DP = 1 x 1 x 4 = 4" in err
    assert "7 layers do not split evenly over PP=2 stages" in err
    # sizes the user did not set adapt to the GPUs and the model, and one line says so
    assert main("pretrain", ["--dry-run", "--gpus", "8", 'model.hybrid_override_pattern="MEME*ME"',
                             "model.num_layers=7"]) == 0
    captured = capsys.readouterr()
    assert "adapted PP 2 -> 1, EP 32 -> 8" in captured.err
    assert "8 GPUs = TP1 x PP1 x CP1 x DP8; experts EP8" in captured.out
    assert main("pretrain", ["--dry-run", "--gpus", "8", 'model.hybrid_override_pattern="MEME*ME"',
                             "model.num_layers=7", "model.pipeline_model_parallel_size=1",
                             "model.expert_model_parallel_size=8", "train.global_batch_size=64"]) == 0
    assert "7 layers (3 Mamba-2, 3 MoE, 1 attention)" in capsys.readouterr().out
    assert main("pretrain", ["--dry-run", "--nvfp4"]) == 0
    assert "warning: precision=nvfp4 runs only on Blackwell" in capsys.readouterr().out


def _resiliency_ext_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia_resiliency_ext.inprocess") is not None
    except ModuleNotFoundError:  # the parent package is absent, as on PyPI-only machines
        return False


@pytest.mark.skipif(_resiliency_ext_installed(), reason="the training loop is importable here: this would really train")
def test_launch_without_resiliency_ext_names_the_package(recipes, monkeypatch: pytest.MonkeyPatch) -> None:
    from nemotron3_super.launch import main

    monkeypatch.setenv("WORLD_SIZE", "1")  # as torchrun --nproc-per-node=1 would
    one_gpu = ["model.pipeline_model_parallel_size=1", "model.expert_model_parallel_size=1",
               "train.global_batch_size=1", "model.hybrid_override_pattern=ME", "model.num_layers=2"]
    with pytest.raises(SystemExit, match="nvidia-resiliency-ext.*dry-run. works without it"):
        main("pretrain", ["--gpus", "1", *one_gpu])


# ---------------------------------------------------------------------------------- data
def _indexed_dataset(prefix: Path, docs: int = 4) -> str:
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for doc in range(docs):
        builder.add_item(torch.arange(doc * 10, doc * 10 + 17, dtype=torch.int32))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    assert len(IndexedDataset(str(prefix))) == docs
    return str(prefix)


def test_pretrain_blend_json_points_at_indexed_dataset(recipes, offline, tmp_path: Path) -> None:
    a, b = _indexed_dataset(tmp_path / "web_text_document"), _indexed_dataset(tmp_path / "code_text_document")
    blend = tmp_path / "blend.json"
    blend.write_text(json.dumps({"train": ["0.7", a, "0.3", b], "valid": [a], "test": []}))
    cfg = recipes.nemotron3_super_pretrain_config(per_split_data_args_path=blend)
    assert cfg.dataset.blend is None and cfg.dataset.split is None
    assert cfg.dataset.blend_per_split == [([a, b], [0.7, 0.3]), ([a], None), None]
    assert cfg.tokenizer.tokenizer_type == "HuggingFaceTokenizer"  # real text needs the real tokenizer

    blend.write_text(json.dumps({"train": [str(tmp_path / "missing_text_document")]}))
    with pytest.raises(FileNotFoundError, match="train dataset prefix .*missing_text_document.bin"):
        recipes.nemotron3_super_pretrain_config(per_split_data_args_path=blend)
    blend.write_text(json.dumps({"training": [a]}))
    with pytest.raises(ValueError, match="non-empty 'train' list.*unknown keys: \\['training'\\]"):
        recipes.nemotron3_super_pretrain_config(per_split_data_args_path=blend)


def test_sft_reads_a_local_squad_jsonl_offline(recipes, offline, tmp_path: Path) -> None:
    import dataclasses

    from megatron.bridge.data.sources.hf import load_and_adapt_hf_dataset

    rows = [{"id": str(i), "title": "t", "context": f"Paris is the capital of France ({i}).",
             "question": "What is the capital of France?", "answers": {"text": ["Paris"], "answer_start": [0]}}
            for i in range(5)]
    path = tmp_path / "squad_train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = recipes.nemotron3_super_sft_config(squad_jsonl=path)
    source = cfg.dataset.hf_dataset
    assert (source.path_or_dataset, source.schema_adapter, source.load_kwargs) == (
        "json", "squad", {"data_files": str(path)})
    cfg.dataset.validate()
    source = dataclasses.replace(source, load_kwargs={**source.load_kwargs, "cache_dir": str(tmp_path / "cache")})
    examples = load_and_adapt_hf_dataset(source)
    assert len(examples) == 5 and examples[0]["completion"] == "Paris"
    assert examples[0]["prompt"].startswith("Context: Paris is the capital of France (0). Question:")
    with pytest.raises(FileNotFoundError, match="SQuAD JSONL not found"):
        recipes.nemotron3_super_sft_config(squad_jsonl=tmp_path / "nope.jsonl")


@pytest.fixture
def converted_meta(tmp_path: Path) -> Path:
    """What `convert import` leaves beside the weights: nemotron3_super.json with the HF config and the
    iteration folder (a dry run reads only those)."""
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.megatron_io import ITERATION_DIR, META_FILE

    ckpt = tmp_path / "tiny_megatron"
    (ckpt / ITERATION_DIR).mkdir(parents=True)
    (ckpt / META_FILE).write_text(json.dumps({"format": 1, "hf_config": tiny_super().to_hf_config_dict()}))
    return ckpt


def test_finetune_takes_the_model_shape_from_a_converted_checkpoint(converted_meta: Path, capsys) -> None:
    from nemotron3_super.launch import run_recipe

    assert run_recipe("nemotron3_super_lora_config", [f"checkpoint.pretrained_checkpoint={converted_meta}",
                                                      "model.tensor_model_parallel_size=1",
                                                      "model.expert_model_parallel_size=1",
                                                      "model.sequence_parallel=False"], dry_run=True, gpus=1) == 0
    out = capsys.readouterr().out
    assert "model: 7 layers (3 Mamba-2, 3 MoE, 1 attention), hidden 128, 8 experts" in out, out[:600]
    assert "seq 2048" in out  # the recipe's sequence length stays; only the shape comes from the checkpoint


def test_finetune_override_that_contradicts_the_checkpoint_is_named(converted_meta: Path, capsys) -> None:
    from nemotron3_super.launch import run_recipe

    code = run_recipe("nemotron3_super_sft_config", [f"checkpoint.pretrained_checkpoint={converted_meta}",
                                                     "model.hidden_size=256", "model.num_layers=7"],
                      dry_run=True)
    err = capsys.readouterr().err
    assert code == 2 and "model.hidden_size=256 (checkpoint: 128)" in err and "num_layers" not in err, err


def test_options_may_come_between_overrides(converted_meta: Path, capsys) -> None:
    """``... finetune checkpoint.pretrained_checkpoint=P --peft lora train.train_iters=20``: argparse's plain
    parser rejects the overrides after ``--peft`` as unrecognized (found on the GPU machine)."""
    from nemotron3_super.launch import main

    assert main("finetune", [f"checkpoint.pretrained_checkpoint={converted_meta}", "--peft", "lora",
                             "model.tensor_model_parallel_size=1", "model.expert_model_parallel_size=1",
                             "model.sequence_parallel=False", "--gpus", "1", "train.train_iters=20",
                             "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe nemotron3_super_lora_config" in out and "warmup" in out and "of 20 iters" in out, out[:800]
