"""Checkpoints written with one expert module load into the other, at EP 1 and 2 (torchrun, gloo, CPU).

``convert import`` writes a torch_dist checkpoint with SequentialMLP (or GroupedMLP) experts; ``convert export``
reads it into the other module and must give back the original HF tensors bit for bit. The module is chosen
by wrapping the conversion's model builder with ``moe_grouped_gemm`` (the commands have no such option:
checkpoints do not depend on it)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # torchrun runs of megatron-core model builds (needs mamba-ssm)

_WORKER = """
import functools, sys
import nemotron3_super.conversion.commands as commands
verb, experts, ep, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
commands.build_model = functools.partial(commands.build_model, moe_grouped_gemm=experts == "grouped")
if verb == "import":
    commands.import_checkpoint(*paths, ep=ep)
else:
    commands.export_checkpoint(*paths, ep=ep)
"""


def _convert(tmp: Path, verb: str, experts: str, ep: int, *paths: Path) -> None:
    worker = tmp / "worker.py"
    worker.write_text(_WORKER)
    cmd = [sys.executable, str(worker)]
    if ep > 1:
        with socket.socket() as s:  # a free port (torchrun's --master-port 0 hangs the gloo rendezvous)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ep), "--master-port",
               str(port), str(worker)]
    result = subprocess.run([*cmd, verb, experts, str(ep), *map(str, paths)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("saved,loaded", [("sequential", "grouped"), ("grouped", "sequential")])
def test_checkpoint_loads_into_the_other_expert_module(tmp_path: Path, saved: str, loaded: str) -> None:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint
    from nemotron3_super.conversion.megatron_io import checkpoint_dtypes

    hf = write_tiny_checkpoint(tiny_super(), tmp_path / "hf")
    _convert(tmp_path, "import", saved, 2, hf, tmp_path / "megatron")  # written at EP=2
    keys = checkpoint_dtypes(tmp_path / "megatron")
    assert "decoder.layers.1.mlp.experts.experts.linear_fc1.weight" in keys  # the same global tensor either way
    for ep in (2, 1):
        out = tmp_path / f"exported-ep{ep}"
        _convert(tmp_path, "export", loaded, ep, hf, tmp_path / "megatron", out)
        report = audit(hf, out)
        assert report.ok, report.render()
        assert report.tensors == tiny_super().hf_tensor_count()
