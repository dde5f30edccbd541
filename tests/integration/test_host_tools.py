"""The host's own tools, after ``pip install``, with no call into this package: its AutoBridge in a plain
script, and its ``r0.6.0`` conversion worker (vendored in tests/peer/vendor/conversion, unchanged), on CPU.

Each runs in a fresh interpreter, where only the installed start-up hook (``nemotron3_super.pth``)
brings our bridge and the host's CPU fixes; the output must be bit-identical to the input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron3_super.activation import ENV_PLUGINS
from nemotron3_super.architecture import tiny_super
from nemotron3_super.conversion.audit import audit
from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

pytestmark = pytest.mark.slow
WORKER = Path(__file__).resolve().parents[1] / "peer" / "vendor" / "conversion" / "run_conversion.py"
TIMEOUT_S = 1800  # a fresh `import megatron.bridge` alone takes 15 s idle, minutes on a loaded CI box

# Two plain scripts, as the host's own tools run them (its import_ckpt leaves the process group it started,
# and export_ckpt starts its own: one process cannot run both, on a GPU machine either).
IMPORT_SCRIPT = """
import sys
from megatron.bridge import AutoBridge

if __name__ == "__main__":  # the checkpoint writer spawns helpers, which import __main__ again
    AutoBridge.import_ckpt(sys.argv[1], sys.argv[2])
"""
EXPORT_SCRIPT = """
import sys
from megatron.bridge import AutoBridge

if __name__ == "__main__":
    hf, meg, out = sys.argv[1:]
    AutoBridge.from_auto_config(meg, hf).export_ckpt(meg, out)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", ENV_PLUGINS)}
    return {**env, **extra}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=_env(**env))
    assert proc.returncode == 0, f"{args[:2]} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tiny_super(), tmp_path_factory.mktemp("host_tools") / "hf")


def _assert_bit_identical(hf: Path, out: Path) -> None:
    report = audit(hf, out)
    assert report.ok, report.render()
    assert (out / "tokenizer.json").is_file(), "the host's export copies the tokenizer"


def test_autobridge_round_trip_in_plain_scripts(tiny_hf: Path, tmp_path: Path) -> None:
    """``AutoBridge.import_ckpt``, then ``export_ckpt``, in scripts that never name this package."""
    (tmp_path / "import.py").write_text(IMPORT_SCRIPT)
    (tmp_path / "export.py").write_text(EXPORT_SCRIPT)
    assert "nemotron3_super" not in IMPORT_SCRIPT + EXPORT_SCRIPT
    _run([str(tmp_path / "import.py"), str(tiny_hf), str(tmp_path / "meg")], tmp_path)
    _run([str(tmp_path / "export.py"), str(tiny_hf), str(tmp_path / "meg"), str(tmp_path / "out")], tmp_path)
    _assert_bit_identical(tiny_hf, tmp_path / "out")


def test_host_conversion_worker_imports_and_exports(tiny_hf: Path, tmp_path: Path) -> None:
    """The host's ``scripts/conversion/run_conversion.py`` (r0.6.0), ``--device cpu``, unchanged; the
    export reads the iteration folder, as the host's README shows it."""
    meg, out = tmp_path / "meg", tmp_path / "out"
    _run([str(WORKER), "import", "--device", "cpu", "--hf-model", str(tiny_hf), "--megatron-path", str(meg)],
         WORKER.parent)
    _run([str(WORKER), "export", "--device", "cpu", "--hf-model", str(tiny_hf),
          "--megatron-path", str(meg / "iter_0000000"), "--hf-path", str(out)], WORKER.parent)
    _assert_bit_identical(tiny_hf, out)
