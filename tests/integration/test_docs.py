"""The docs, run as a new user would: every fenced block marked runnable on CPU in README.md, docs/ and
BENCHMARKS.md is executed against tiny checkpoints, so the docs cannot drift from the code again.

Marker convention (an HTML comment on the line right before the fence; invisible when rendered):

* ``<!-- docs-test: cpu -->``: the block runs as written (``bash`` with ``set -euo pipefail``, or
  ``python``) from the repository root, as on a fresh clone, with ``nemotron3-super`` on PATH. Blocks of
  one file run in order and share their outputs, so a later block may use what an earlier one wrote.
  Placeholders are filled in:
  ``HF_DIR`` (a tiny Super-shaped HF checkpoint), ``MEG_DIR``, ``OUT_DIR``, ``path/to/config.json``.
* ``<!-- docs-test: dry-run -->``: every ``torchrun ... -m nemotron3_super.<pretrain|finetune> ARGS``
  command of the block is checked as ``python -m nemotron3_super.<...> --dry-run --gpus N ARGS`` would check it,
  N = nnodes x nproc-per-node: the layout, overrides and memory checks a launch would fail on. It runs through
  the launch module's ``main`` in the test process (the ``cpu`` blocks already start such dry runs as
  processes; a process per launch line would import the host again each time). The same placeholders are
  filled in; ``MEG_DIR`` is converted from ``HF_DIR`` first if no earlier block did (a dry run checks that a
  pretrained checkpoint exists).
* ``<!-- docs-test: by tests/PATH.py -->``: the block is run by that test file, which reads it from the doc
  (by this marker) and checks what it prints; the docs test only checks that the file exists and does so. For a
  block whose output a test examines anyway, so it is not run twice.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from launching import dry_run

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/RECIPES.md", "BENCHMARKS.md")
MARK = re.compile(r"^<!--\s*docs-test:\s*(\S+)(?:\s+(\S+))?\s*-->\s*$")
KINDS = ("cpu", "dry-run", "by")
LAUNCH_MODULES = ("nemotron3_super.pretrain", "nemotron3_super.finetune")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    kind: str
    lang: str
    text: str
    runner: str = ""  # kind "by": the test file that runs the block


def marked_blocks(doc: str) -> list[Block]:
    """The marked fenced blocks of ``doc``; a marker without a fence after it is an error."""
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = MARK.match(line.strip())
        if not match:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        kind, runner = match.group(1), match.group(2) or ""
        assert kind in KINDS, f"{doc}:{i + 1}: docs-test marker {kind!r}: expected one of {KINDS}"
        assert (kind == "by") == bool(runner), (f"{doc}:{i + 1}: only a `by` marker names a file, and it must "
                                                "(<!-- docs-test: by tests/PATH.py -->)")
        assert fence.startswith("```"), f"{doc}:{i + 1}: docs-test marker not followed by a ``` fence"
        lang = fence[3:].strip().split()[0] if fence[3:].strip() else ""
        assert lang in ("bash", "python"), f"{doc}:{i + 2}: marked block language {lang!r}: bash or python"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip().startswith("```"))
        blocks.append(Block(doc, i + 2, kind, lang, "\n".join(lines[i + 2:end]) + "\n", runner))
    return blocks


def dry_run_commands(block: Block) -> list[list[str]]:
    """Each torchrun launch of a dry-run block as ``python -m MODULE --dry-run --gpus N ARGS``."""
    commands = []
    for logical in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(logical, comments=True)
        if not words:
            continue
        assert words[0] == "torchrun" and "-m" in words, f"{block.doc}:{block.line}: not a torchrun launch: {logical}"
        m = words.index("-m")
        module, args = words[m + 1], words[m + 2:]
        assert module in LAUNCH_MODULES, f"{block.doc}:{block.line}: {module} has no --dry-run"
        opts = dict(w.lstrip("-").split("=", 1) for w in words[1:m] if w.startswith("--") and "=" in w)
        gpus = int(opts.get("nnodes", 1)) * int(opts.get("nproc-per-node", 1))
        commands.append([sys.executable, "-m", module, "--dry-run", "--gpus", str(gpus), *args])
    assert commands, f"{block.doc}:{block.line}: dry-run block without a torchrun launch"
    return commands


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    folder = tmp_path_factory.mktemp("docs") / "tiny-hf"
    write_tiny_checkpoint(tiny_super(), folder)
    return folder


def _run(cmd: list[str], block: Block, cwd: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)  # nemotron3-super, torchrun of this environment
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, (f"{block.doc}:{block.line} ({block.kind} block) failed with exit "
                                  f"{proc.returncode}:\n{block.text}\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-4000:]}")


def _dry_run(cmd: list[str], block: Block, cwd: Path, capsys: pytest.CaptureFixture,
             monkeypatch: pytest.MonkeyPatch) -> None:
    """``cmd`` (``python -m nemotron3_super.<mode> ARGS``) through the launch module's ``main``, in ``cwd``."""
    assert cmd[1] == "-m" and cmd[2] in LAUNCH_MODULES, cmd
    monkeypatch.chdir(cwd)
    code, out, err = dry_run(cmd[2].rsplit(".", 1)[1], cmd[3:], capsys, monkeypatch)
    assert code == 0, (f"{block.doc}:{block.line} ({block.kind} block) failed with exit {code}:\n{block.text}\n"
                       f"--- command\n{' '.join(cmd[1:])}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}")
    assert "GPUs" in out, out[-4000:]


def _fill(text: str, fill: dict[str, str]) -> str:
    for placeholder, value in fill.items():
        text = text.replace(placeholder, value)
    return text


def test_markers_are_well_formed() -> None:
    """Every doc parses, and the docs that promise runnable commands mark some."""
    found = {doc: marked_blocks(doc) for doc in DOCS}
    assert found["README.md"] and found["docs/RECIPES.md"] and found["BENCHMARKS.md"]
    for blocks in found.values():
        for block in blocks:
            if block.kind == "dry-run":
                dry_run_commands(block)
            if block.kind == "by":  # the named test reads this block from this doc by its marker
                runner = REPO / block.runner
                assert runner.is_file(), f"{block.doc}:{block.line}: {block.runner} (named by the marker) is missing"
                source = runner.read_text(encoding="utf-8")
                assert block.doc in source and f"docs-test: by {block.runner}" in source, (
                    f"{block.doc}:{block.line}: {block.runner} does not read this block (by its marker)")


@pytest.mark.parametrize("doc", DOCS)
def test_marked_blocks_run(doc: str, tiny_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    fill = {"path/to/config.json": str(tiny_hf / "config.json"), "HF_DIR": str(tiny_hf),
            "MEG_DIR": str(tmp_path / "megatron"), "OUT_DIR": str(tmp_path / "hf-out")}
    for n, block in enumerate(marked_blocks(doc)):
        if block.kind == "by":
            continue  # run by the test file the marker names (checked above)
        if block.kind == "dry-run":
            for cmd in dry_run_commands(block):
                if any("MEG_DIR" in word for word in cmd) and not Path(fill["MEG_DIR"]).is_dir():
                    # a dry run checks that the checkpoint exists: convert it first, as the README says
                    from nemotron3_super.conversion.commands import import_checkpoint

                    import_checkpoint(fill["HF_DIR"], fill["MEG_DIR"], quiet=True)
                _dry_run([_fill(word, fill) for word in cmd], block, tmp_path, capsys, monkeypatch)
            continue
        text = _fill(block.text, fill)
        script = tmp_path / f"block{n}.{'sh' if block.lang == 'bash' else 'py'}"
        script.write_text(("set -euo pipefail\n" if block.lang == "bash" else "") + text)
        _run(["bash", str(script)] if block.lang == "bash" else [sys.executable, str(script)], block, REPO)
