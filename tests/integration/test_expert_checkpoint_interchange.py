"""Checkpoints written with one expert module load into the other, at EP 1 and 2 (torchrun, gloo, CPU).

``convert import`` writes a torch_dist checkpoint with SequentialMLP (or GroupedMLP) experts; ``convert export``
reads it into the other module and must give back the original HF tensors bit for bit. The module is chosen
by wrapping the conversion's model builder with ``moe_grouped_gemm`` (the commands have no such option:
checkpoints do not depend on it).

Each launch runs several conversions in one process per rank, so the host is imported once per rank rather
than once per conversion (that import is most of a tiny conversion's time on CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from launching import torchrun

pytestmark = pytest.mark.slow  # torchrun runs of megatron-core model builds (needs mamba-ssm)

_WORKER = """
import functools, sys
import nemotron3_super.conversion.commands as commands
build = commands.build_model
for step in sys.argv[1:]:  # "verb:experts:ep:path,path[,path]"
    verb, experts, ep, paths = step.split(":", 3)
    commands.build_model = functools.partial(build, moe_grouped_gemm=experts == "grouped")
    convert = commands.import_checkpoint if verb == "import" else commands.export_checkpoint
    convert(*paths.split(","), ep=int(ep))
"""


def _launch(tmp: Path, ranks: int, *steps: tuple[str | Path, ...]) -> None:
    """Run ``steps`` ((verb, experts, path, ...), EP = ``ranks``) in order in one launch of ``ranks``
    processes; fails the test with the output on a non-zero exit."""
    worker = tmp / "worker.py"
    worker.write_text(_WORKER)
    args = [f"{verb}:{experts}:{ranks}:{','.join(map(str, paths))}" for verb, experts, *paths in steps]
    if ranks > 1:
        torchrun(ranks, str(worker), *args, timeout=900)
        return
    result = subprocess.run([sys.executable, str(worker), *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_checkpoints_load_into_the_other_expert_module_at_either_ep(tmp_path: Path) -> None:
    """Grouped saved at EP 1 -> sequential at EP 1 and 2; sequential saved at EP 2 -> grouped at EP 2 and 1."""
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint
    from nemotron3_super.conversion.megatron_io import checkpoint_dtypes

    hf = write_tiny_checkpoint(tiny_super(), tmp_path / "hf")
    grouped, sequential = tmp_path / "grouped-ep1", tmp_path / "sequential-ep2"
    _launch(tmp_path, 1, ("import", "grouped", hf, grouped), ("export", "sequential", hf, grouped, tmp_path / "a"))
    _launch(tmp_path, 2, ("import", "sequential", hf, sequential),
            ("export", "grouped", hf, sequential, tmp_path / "b"), ("export", "sequential", hf, grouped, tmp_path / "c"))
    _launch(tmp_path, 1, ("export", "grouped", hf, sequential, tmp_path / "d"))
    for saved in (grouped, sequential):  # the same global tensor either way
        assert "decoder.layers.1.mlp.experts.experts.linear_fc1.weight" in checkpoint_dtypes(saved)
    for out in "abcd":
        report = audit(hf, tmp_path / out)
        assert report.ok, f"{out}: {report.render()}"
        assert report.tensors == tiny_super().hf_tensor_count()
