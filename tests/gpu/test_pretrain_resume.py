"""Mock pretraining through the launch module and the host's training loop, then resume from a checkpoint.

    source .whl/prelude.sh; python3 -m pytest tests/gpu/test_pretrain_resume.py -q -s

One GPU, the seed's debug overrides (``MEME*ME``, 7 layers) plus what makes it fit one card and its disk
(16 experts with top-4, 32,768-token vocabulary). Run 1 trains 50 iterations and saves at 25 and 50; run 2 loads
iteration 25 and trains 26..50 again. Its first loss is computed with the restored weights before any
update, so it must equal run 1's loss at iteration 26 (mock data is deterministic): training continues
where it was, not from scratch.
The GPU machine's missing packages are handled by ``gpu_launch.run_training``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from gpu_launch import run_training

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# 16 experts and a 32,768-token vocabulary keep one checkpoint (bf16 weights + fp32 main weights + Adam)
# near 18 GB: with 64 experts and the full vocabulary two checkpoints (44 GB each) overflowed the GPU
# machine's 64 GiB disk at iteration 50 (measured on an H200 machine, 2026-11-28).
DEBUG = ["model.hybrid_override_pattern=MEME*ME", "model.num_layers=7", "model.num_moe_experts=16", "model.moe_router_topk=4",
         "model.vocab_size=32768", "tokenizer.vocab_size=32768",
         "model.pipeline_model_parallel_size=1", "model.expert_model_parallel_size=1",
         "model.use_mamba_mem_eff_path=False", "model.seq_length=1024", "dataset.seq_length=1024",
         "train.train_iters=50", "train.global_batch_size=8", "train.micro_batch_size=2",
         "logger.log_interval=1", "checkpoint.save_interval=25", "checkpoint.async_save=False"]


def _launch(tmp: Path, save: str, extra: list[str]) -> dict[int, float]:
    losses, _ = run_training(tmp, "nemotron3_super.pretrain", [*DEBUG, f"checkpoint.save={tmp / save}", *extra],
                             log_name=save)
    return losses


def test_mock_pretraining_saves_and_resumes(tmp_path: Path) -> None:
    first = _launch(tmp_path, "ckpt", [])
    assert sorted(first) == list(range(1, 51)), f"logged iterations: {sorted(first)}"
    assert all(math.isfinite(x) for x in first.values())
    early, late = sum(first[i] for i in range(1, 6)) / 5, sum(first[i] for i in range(46, 51)) / 5
    print(f"\n[{torch.cuda.get_device_name()}] run 1 losses: " + " ".join(f"{first[i]:.3f}" for i in sorted(first)))
    assert late < early - 1.0, f"loss did not fall: first 5 mean {early:.3f}, last 5 mean {late:.3f}"
    assert (tmp_path / "ckpt" / "iter_0000025").is_dir() and (tmp_path / "ckpt" / "iter_0000050").is_dir()

    resumed = _launch(tmp_path, "ckpt_resumed", [f"checkpoint.load={tmp_path / 'ckpt'}", "checkpoint.ckpt_step=25"])
    print(f"[{torch.cuda.get_device_name()}] run 2 (from iteration 25) losses: "
          + " ".join(f"{resumed[i]:.3f}" for i in sorted(resumed)))
    assert min(resumed) == 26, f"resumed run started at iteration {min(resumed)}, expected 26"
    assert abs(resumed[26] - first[26]) <= max(0.05, 0.05 * first[26]), (
        f"iteration 26: resumed loss {resumed[26]:.4f} vs uninterrupted {first[26]:.4f}")
    assert all(math.isfinite(resumed[i]) for i in range(26, 51))
    assert sum(resumed[i] for i in range(26, 51)) / 25 < first[1] / 4, "resumed run looks untrained"
