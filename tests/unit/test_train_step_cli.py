"""train_step.py's command line: ``--cpu-smoke`` picks its tiny shapes itself (explicit flags still win),
and a run whose every row failed exits non-zero."""

from __future__ import annotations

import pytest
from bench_scripts import load

ts = load("train_step")


def test_cpu_smoke_alone_picks_the_smoke_shapes() -> None:
    args = ts.parse_args(["--cpu-smoke"])
    for name, value in ts.SMOKE_SHAPE.items():
        assert getattr(args, name) == value, name
    assert "M" not in args.pattern  # Mamba's scan is Triton-only: a CPU row with it fails


def test_explicit_flags_win_over_smoke_shapes() -> None:
    args = ts.parse_args(["--cpu-smoke", "--hidden", "128", "--seq", "16"])
    assert (args.hidden, args.seq, args.experts) == (128, 16, ts.SMOKE_SHAPE["experts"])


def test_without_smoke_the_benchmark_shapes_stay() -> None:
    args = ts.parse_args([])
    assert (args.hidden, args.pattern, args.seq) == (2048, ts.DEFAULT_PATTERN, 4096)


@pytest.mark.parametrize(("rows", "status"), [
    ([{"error": "RuntimeError: invalid argument to exchangeDevice"}] * 3, ts.EXIT_ALL_FAILED),
    ([{"error": "boom"}, {"step_ms": 1.0}], 0),
    ([{"step_ms": 1.0}], 0),
])
def test_every_row_failed_is_a_failure(rows: list[dict], status: int, capsys: pytest.CaptureFixture) -> None:
    assert ts.exit_status({"rows": rows}) == status
    assert ("every row failed" in capsys.readouterr().err) == (status != 0)


def test_build_only_has_no_rows_and_succeeds() -> None:
    assert ts.exit_status({"build_only": []}) == 0
