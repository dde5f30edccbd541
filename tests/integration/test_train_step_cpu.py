"""benchmarks/train_step.py end to end on CPU (``--cpu-smoke``): host probe, every row, the interleaved
paired rounds, the table and the JSON, on real megatron-core models of both implementations, ours with
both expert modules (``--expert-impl both``).

The GPU is where it measures; this catches a broken script before a device call is spent on it. No Mamba
layer here: megatron-core's SSD scan is Triton-only. The run is BENCHMARKS.md's ``--cpu-smoke`` command as
written there (the docs test leaves that block to this file), plus ``--expert-impl both --json``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_step.py"
DOC, MARKER = "BENCHMARKS.md", "<!-- docs-test: by tests/integration/test_train_step_cpu.py -->"
HIDDEN = 256  # --cpu-smoke's hidden size (the script's SMOKE_SHAPE)


def documented_smoke_command() -> list[str]:
    """BENCHMARKS.md's smoke command (the block after MARKER), with this environment's python."""
    text = (REPO / DOC).read_text(encoding="utf-8")
    assert MARKER in text, f"{DOC}: no block marked {MARKER}"
    block = re.match(r"\s*```bash\n(.*?)```", text[text.index(MARKER) + len(MARKER):], re.S)
    assert block, f"{DOC}: {MARKER} is not followed by a bash block"
    words = shlex.split(block.group(1))
    assert words[:2] == ["python", "benchmarks/train_step.py"] and "--cpu-smoke" in words, block.group(1)
    return [sys.executable, str(SCRIPT), *words[2:]]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("train_step") / "report.json"
    cmd = [*documented_smoke_command(), "--expert-impl", "both", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_every_row_trains_and_is_reported(smoke: tuple[dict, str]) -> None:
    report, stdout = smoke
    rows = {(r["impl"], r["experts"], r["shape"]): r for r in report["rows"]}
    assert set(rows) == {("host", None, "host-buildable"), *(("ours", e, s) for e in ("grouped", "sequential")
                                                              for s in ("host-buildable", "full"))}
    for row in rows.values():
        assert "error" not in row, row.get("trace")
        assert row["mamba_path"] == "fallback" and row["mamba_kernels"] == "no Mamba layers"
        assert row["loss_finite"] and len(row["step_ms"]) == 3
        assert row["tokens_per_s"] > 0 and row["tflops"] > 0
    assert "| host | host-buildable | fallback |" in stdout and "wrote " in stdout
    assert "| ours (grouped) | full |" in stdout and "| ours (sequential) | full |" in stdout
    assert any("--cpu-smoke" in note for note in report["notes"])


def test_expert_modules_train_the_same_model(smoke: tuple[dict, str]) -> None:
    """Grouped and sequential experts: same parameter count, same initial weights (same seed), so the loss
    after the warm-up updates agrees to bf16 rounding, and the script says so."""
    report, stdout = smoke
    for shape in ("host-buildable", "full"):
        grouped, sequential = (next(r for r in report["rows"] if (r["experts"], r["shape"]) == (e, shape))
                               for e in ("grouped", "sequential"))
        assert grouped["params"] == sequential["params"]
        assert abs(grouped["loss_first"] - sequential["loss_first"]) <= 1e-2 * abs(sequential["loss_first"])
    assert "loss after warm-up by expert module, ours @ full, mamba fallback: grouped" in stdout


def test_same_shape_rows_differ_only_by_our_final_norm(smoke: tuple[dict, str]) -> None:
    """The host cannot build the final norm without TE; everything else at that shape has the same size."""
    rows = {(r["impl"], r["experts"], r["shape"]): r for r in smoke[0]["rows"]}
    host, ours = rows["host", None, "host-buildable"], rows["ours", "grouped", "host-buildable"]
    assert ours["params"] - host["params"] == HIDDEN
    assert ours["flops_per_token"] == host["flops_per_token"]
    assert ours["ratio_same_shape"] and rows["ours", "grouped", "full"]["ratio_same_shape"] is False


def test_paired_rounds_ran_on_both_models(smoke: tuple[dict, str]) -> None:
    report, stdout = smoke
    paired = next(r for r in report["rows"] if r["impl"] == "ours" and r["shape"] == "host-buildable")["paired"]
    assert not any("paired" in r for r in report["rows"] if r["experts"] == "sequential")  # first module only
    assert "error" not in paired, paired.get("trace")
    assert paired["rounds"] == 3 and len(paired["host_ms"]) == len(paired["ours_ms"]) == 3
    ratios = sorted(h / o for h, o in zip(paired["host_ms"], paired["ours_ms"], strict=True))
    assert math.isclose(paired["ratio_median"], ratios[1])
    assert "interleaved rounds" in stdout


def test_without_a_gpu_the_script_refuses_unless_asked_for_a_smoke_run(tmp_path: Path) -> None:
    """Without --cpu-smoke or --build-only a CPU machine gets a clear refusal, not CPU numbers."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "no CUDA device visible to torch" in result.stderr and "--cpu-smoke" in result.stderr
