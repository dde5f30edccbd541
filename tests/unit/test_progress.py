"""Conversion progress on stderr: tqdm's live bar on a terminal, one line per 10% otherwise, silent when quiet."""

from __future__ import annotations

import io

import pytest

from nemotron3_super.conversion.progress import Progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal (as stderr does in an interactive shell)."""

    def isatty(self) -> bool:
        return True


def run(stream: io.StringIO, *, quiet: bool = False, steps: int = 40, step_bytes: int = 2**20) -> str:
    with Progress("import", steps * step_bytes, steps * 2, quiet=quiet, stream=stream) as bar:
        for _ in range(steps):
            bar.update(step_bytes, tensors=2)
    return stream.getvalue()


def test_not_a_terminal_prints_one_line_per_ten_percent() -> None:
    lines = run(io.StringIO()).splitlines()
    assert len(lines) == 10, lines
    assert [line.split("%")[0].split()[-1] for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert "\r" not in "".join(lines)
    last = lines[-1]
    assert last.startswith("import: 100%") and "80/80 tensors" in last and "40.0M/40.0M" in last
    assert "B/s" in last  # rate; ETA and elapsed in tqdm's [elapsed<remaining] field
    assert "<" in lines[0] and "8/80 tensors" in lines[0]


def test_few_large_steps_still_print_each_decile_once() -> None:
    lines = run(io.StringIO(), steps=3, step_bytes=10**6).splitlines()  # 33%, 67%, 100%
    assert [line.split("%")[0].split()[-1] for line in lines] == ["33", "67", "100"]


def test_terminal_gets_the_live_bar() -> None:
    out = run(Terminal())
    assert "\r" in out and "import: 100%" in out and "80/80 tensors" in out


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_quiet_prints_nothing(stream: type) -> None:
    assert run(stream(), quiet=True) == ""


def test_ranks_other_than_zero_print_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import nemotron3_super.conversion.progress as progress

    monkeypatch.setattr(progress, "_rank", lambda: 1)  # torchrun rank 1 (the real case: tests/integration)
    assert run(Terminal()) == "" and run(io.StringIO()) == ""
