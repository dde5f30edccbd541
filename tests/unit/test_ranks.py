"""Only one process of a launch prints reports and notices; a plain process always does."""

from __future__ import annotations

import pytest

from nemotron3_super.ranks import reports_here


@pytest.mark.parametrize("rank,expected", [(None, True), ("0", True), (" 0 ", True), ("00", True), ("1", False),
                                           ("7", False), ("", True), ("not-a-rank", True)])
def test_reports_here_follows_the_launchers_rank(monkeypatch: pytest.MonkeyPatch, rank: str | None,
                                                  expected: bool) -> None:
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert reports_here() is expected
