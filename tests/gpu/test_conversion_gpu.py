"""Converted checkpoint vs transformers on a GPU: same logits, and where the hidden states part if not.

    source .whl/prelude.sh; python3 -m pytest tests/gpu/test_conversion_gpu.py -q -s

float32: logits relative L2 <= 1e-4 and no layer past 1e-3; bf16: cosine >= 0.999 (routing near-ties flip
in bf16, see the GPU README). The per-layer report names the first layer whose output differs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"),
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("gpu-compare")
    hf = write_tiny_checkpoint(tiny_super(), root / "hf")
    import_checkpoint(hf, root / "megatron")
    return hf, root / "megatron"


def test_float32_logits_match_transformers(converted) -> None:
    from nemotron3_super.conversion.compare import compare

    report = compare(*converted, prompt="Hello who are you, and what is a hybrid Mamba model?", dtype="float32")
    print(report.render())
    assert report.layers, "no per-layer hidden states were compared"
    assert report.first_divergent_layer is None, report.render()
    assert report.rel_l2 <= 1e-4, report.render()


def test_bf16_logits_agree_with_transformers(converted) -> None:
    from nemotron3_super.conversion.compare import compare

    report = compare(*converted, prompt="Hello who are you, and what is a hybrid Mamba model?", dtype="bfloat16")
    print(report.render())
    assert report.cosine >= 0.999, report.render()


def test_cli_compare_and_demo_run_on_gpu(converted, capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.cli import main

    hf, megatron = converted
    assert main(["compare", "--hf-model-path", str(hf), "--megatron-model-path", str(megatron)]) == 0
    assert "logits rel-L2" in capsys.readouterr().out
