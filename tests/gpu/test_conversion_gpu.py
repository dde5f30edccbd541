"""Converted checkpoint vs transformers on a GPU: same logits, and where the hidden states part if not.

    source .whl/prelude.sh; python3 -m pytest tests/gpu/test_conversion_gpu.py -q -s

The sharded tests need two GPUs (the nvidia-h200-x2 machine): ``convert import`` at TP=2, EP=2 and PP=2 under
torchrun with ``--device cuda`` (the shards live on the GPUs, NCCL), export back at the other layout, every
tensor bit-exact; then the TP=2 checkpoint is compared against transformers on one GPU.

float32: logits relative L2 <= 1e-4 and no layer past 1e-3; bf16: cosine >= 0.999 (routing near-ties flip
in bf16, see the GPU README). The per-layer report names the first layer whose output differs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
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


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (device kind nvidia-h200-x2)")


def _torchrun(*cli_args: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "nemotron3_super.cli", *cli_args, "--device", "cuda"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout.strip())
    return result.stdout


@two_gpus
@pytest.mark.parametrize(("imported", "exported"), [(("--tp", "2"), ("--ep", "2")), (("--ep", "2"), ("--tp", "2")),
                                                    (("--pp", "2"), ("--ep", "2"))],
                         ids=["import-tp2-export-ep2", "import-ep2-export-tp2", "import-pp2-export-ep2"])
def test_two_gpu_import_export_bit_exact(converted, tmp_path: Path, imported, exported) -> None:
    from nemotron3_super.conversion.audit import audit

    hf = converted[0]
    _torchrun("convert", "import", "--hf-model", str(hf), "--megatron-path", str(tmp_path / "m"), *imported)
    assert len(list((tmp_path / "m" / "iter_0000000").glob("__*_0.distcp"))) == 2  # one file per rank
    _torchrun("convert", "export", "--hf-model", str(hf), "--megatron-path", str(tmp_path / "m"),
              "--hf-path", str(tmp_path / "hf"), *exported)
    report = audit(hf, tmp_path / "hf")
    print(f"[{torch.cuda.get_device_name()} x2] " + report.render())
    assert report.ok and report.mtp_tensors > 0 and report.fp32_tensors, report.render()
    if imported == ("--tp", "2"):
        from nemotron3_super.conversion.compare import compare

        cmp = compare(hf, tmp_path / "m", prompt="Hello who are you, and what is a hybrid Mamba model?")
        print(f"[{torch.cuda.get_device_name()}] TP=2 checkpoint vs transformers:\n" + cmp.render())
        assert cmp.rel_l2 <= 1e-4 and cmp.first_divergent_layer is None, cmp.render()


def test_float32_logits_match_transformers(converted) -> None:
    from nemotron3_super.conversion.compare import compare

    report = compare(*converted, prompt="Hello who are you, and what is a hybrid Mamba model?", dtype="float32")
    print(f"[{torch.cuda.get_device_name()}] " + report.render())
    assert report.layers, "no per-layer hidden states were compared"
    assert report.first_divergent_layer is None, report.render()
    assert report.rel_l2 <= 1e-4, report.render()


def test_bf16_logits_agree_with_transformers(converted) -> None:
    from nemotron3_super.conversion.compare import compare

    report = compare(*converted, prompt="Hello who are you, and what is a hybrid Mamba model?", dtype="bfloat16")
    print(f"[{torch.cuda.get_device_name()}] " + report.render())
    assert report.cosine >= 0.999, report.render()


def test_cli_compare_runs_on_gpu(converted, capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.cli import main

    hf, megatron = converted
    assert main(["compare", "--hf-model-path", str(hf), "--megatron-model-path", str(megatron)]) == 0
    assert "logits rel-L2" in capsys.readouterr().out
