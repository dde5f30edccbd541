"""Sharded conversion under torchrun on CPU (2 gloo ranks): import at TP=2, EP=2 or PP=2, export at another
layout (torch_dist reshards), every tensor bit-exact against the original. PP=2 splits tiny Super's 7 layers
4 + 3, with MTP (and its copy of the word embedding) on the last stage."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import launching
import pytest
import yaml

pytestmark = pytest.mark.slow  # needs mamba-ssm (installed by .ci/env.sh): megatron-core's MambaMixer needs it to build


def torchrun(*cli_args: str) -> subprocess.CompletedProcess:
    """``nemotron3-super`` on 2 ranks; returns the finished process, fails the test with its output on a
    non-zero exit."""
    return launching.torchrun(2, "-m", "nemotron3_super.cli", *cli_args, timeout=600)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    return write_tiny_checkpoint(tiny_super(), tmp_path_factory.mktemp("parallel") / "hf")


@pytest.mark.parametrize("layout", [("--tp", "2"), ("--ep", "2"), ("--pp", "2")], ids=["tp2", "ep2", "pp2"])
def test_sharded_import_exports_bit_exact(tiny_hf: Path, tmp_path: Path, layout: tuple[str, str]) -> None:
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.commands import export_checkpoint

    run = torchrun("convert", "import", "--hf-model", str(tiny_hf), "--megatron-path", str(tmp_path / "m"), *layout)
    assert run.stdout.count("convert import:") == 1  # rank 0 reports
    progress = [line for line in run.stderr.splitlines() if line.startswith("import:")]
    assert len(progress) == 10 and progress[-1].startswith("import: 100%"), run.stderr[-3000:]  # rank 0 only
    assert len(list((tmp_path / "m" / "iter_0000000").glob("__*_0.distcp"))) == 2  # one file per rank
    model = yaml.safe_load((tmp_path / "m" / "iter_0000000" / "run_config.yaml").read_text())["model"]
    layout_fields = {"--tp": "tensor_model_parallel_size", "--ep": "expert_model_parallel_size",
                     "--pp": "pipeline_model_parallel_size"}
    assert model[layout_fields[layout[0]]] == 2
    if layout[0] == "--pp":  # 7 layers over 2 stages, as the conversion model was split
        assert model["num_layers_in_first_pipeline_stage"] == 4
    export_checkpoint(tiny_hf, tmp_path / "m", tmp_path / "hf")  # single process, TP=EP=1
    report = audit(tiny_hf, tmp_path / "hf")
    assert report.ok and report.mtp_tensors == 32, report.render()


@pytest.mark.parametrize("layout", [("--tp", "2"), ("--pp", "2")], ids=["tp2", "pp2"])
def test_sharded_export_from_single_process_import(tiny_hf: Path, tmp_path: Path, layout: tuple[str, str]) -> None:
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.commands import import_checkpoint

    import_checkpoint(tiny_hf, tmp_path / "m")
    torchrun("convert", "export", "--hf-model", str(tiny_hf), "--megatron-path", str(tmp_path / "m"),
             "--hf-path", str(tmp_path / "hf"), *layout)
    report = audit(tiny_hf, tmp_path / "hf")
    assert report.ok, report.render()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m"]  # no partial folders left


def test_roundtrip_under_torchrun_splits_and_reports_once(tiny_hf: Path, tmp_path: Path) -> None:
    """`roundtrip --ep 2` on 2 ranks: both conversions split over the ranks, one shared temporary folder
    (removed at the end), rank 0's audit reported once, every notice said once."""
    before = set(Path(tempfile.gettempdir()).glob("n3s-roundtrip-*"))
    run = torchrun("roundtrip", "--hf-model", str(tiny_hf), "--ep", "2", "--trust-remote-code")
    assert run.stdout.count("result: IDENTICAL") == 1 and run.stdout.count("step:") == 2, run.stdout[-3000:]
    assert run.stderr.count("--trust-remote-code is accepted") == 1, run.stderr[-3000:]
    assert (run.stdout + run.stderr).count("replaces host bridge") <= 1, run.stderr[-3000:]  # rank 0 at most
    assert "are ignored here" not in run.stderr  # under torchrun --ep is honoured, not ignored
    assert set(Path(tempfile.gettempdir()).glob("n3s-roundtrip-*")) == before
