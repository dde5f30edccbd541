"""``--overwrite`` misuse never deletes a byte outside the output's own previous content (issue #12, 1-4).

Every case runs the real CLI against a real tiny checkpoint, with sentinel files planted in the working
directory, in each input folder and in their parent; after each case every sentinel is checked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and converts a tiny model


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/{src/hf, megatron (written by this tool), work (the cwd)}; sentinels in each and in root."""
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.fixtures import PRESETS, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("safety")
    write_tiny_checkpoint(PRESETS["tiny_super"](), root / "src" / "hf")
    import_checkpoint(root / "src" / "hf", root / "megatron")
    (root / "work").mkdir()
    return root


def _plant(root: Path) -> dict[Path, bytes]:
    sentinels = {}
    for folder in (root, root / "src", root / "src" / "hf", root / "megatron", root / "work"):
        path = folder / "SENTINEL.txt"
        path.write_bytes(f"keep {folder.name}".encode())
        sentinels[path] = path.read_bytes()
    for path in [*(root / "src" / "hf").iterdir(), *(root / "megatron").rglob("*")]:  # the inputs themselves
        if path.is_file():
            sentinels[path] = path.read_bytes()
    return sentinels


def _intact(sentinels: dict[Path, bytes]) -> None:
    lost = [str(p) for p, data in sentinels.items() if not p.is_file() or p.read_bytes() != data]
    assert not lost, f"deleted or changed: {lost}"


def _cli(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    from nemotron3_super.cli import main

    monkeypatch.chdir(root / "work")
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err


IMPORT = ("convert", "import", "--hf-model", "../src/hf", "--overwrite", "--megatron-path")
EXPORT = ("convert", "export", "--hf-model", "../src/hf", "--megatron-path", "../megatron", "--overwrite", "--hf-path")


@pytest.mark.parametrize("argv, needle", [
    ((*IMPORT, "."), r"output \. .*is the working directory"),  # case 1
    ((*IMPORT, ".."), r"output \.\. .*is an ancestor of the working directory"),
    ((*IMPORT, "/"), r"output / .*is an ancestor of the working directory"),
    ((*IMPORT, "../src/hf"), r"output \.\./src/hf .*is the input --hf-model \.\./src/hf"),  # case 2
    ((*IMPORT, "../src"), r"output \.\./src .*contains the input --hf-model \.\./src/hf"),
    ((*EXPORT, "../megatron"), r"output \.\./megatron .*is the input --megatron-path \.\./megatron"),
    ((*EXPORT, "../src/hf"), r"output \.\./src/hf .*is the input --hf-model \.\./src/hf"),
    ((*IMPORT, "../src/hf/sub"), r"output \.\./src/hf/sub .*lies inside the input --hf-model \.\./src/hf"),
    ((*IMPORT, "SENTINEL.txt/out"), r"SENTINEL.txt is a file, so no folder can be created below it"),  # case 9
    ((*IMPORT, "SENTINEL.txt"), r"output SENTINEL.txt .*exists and is not a folder"),
], ids=["dot", "parent", "root", "is-input", "holds-input", "export-is-megatron", "export-is-hf", "inside-input",
        "below-file", "is-file"])
def test_overwrite_misuse_is_refused_and_deletes_nothing(tree: Path, monkeypatch, capsys, argv, needle) -> None:
    sentinels = _plant(tree)
    status, err = _cli(tree, monkeypatch, capsys, *argv)
    _intact(sentinels)
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(needle, err), err
    assert not list(tree.glob(".*partial*")) and not list((tree / "work").glob(".*partial*"))


def test_overwrite_refuses_a_folder_this_tool_did_not_write(tree: Path, monkeypatch, capsys) -> None:
    foreign = tree / "work" / "foreign"
    foreign.mkdir(exist_ok=True)
    (foreign / "notes.txt").write_text("mine")
    sentinels = {**_plant(tree), foreign / "notes.txt": b"mine"}
    status, err = _cli(tree, monkeypatch, capsys, *IMPORT, "foreign")
    _intact(sentinels)
    assert status == 2 and "was not written by nemotron3-super (no .nemotron3-super-output.json inside)" in err


def test_symlinked_output_is_resolved(tree: Path, monkeypatch, capsys) -> None:
    """Case 3: a symlink to a folder this tool wrote is replaced through the link (the link stays)."""
    from nemotron3_super.conversion.outputs import MARKER

    real = tree / "work" / "real-out"
    link = tree / "work" / "link-out"
    status, err = _cli(tree, monkeypatch, capsys, *IMPORT, "real-out")
    assert status == 0, err
    link.symlink_to(real)
    sentinels = _plant(tree)
    status, err = _cli(tree, monkeypatch, capsys, *IMPORT, "link-out")
    _intact(sentinels)
    assert status == 0, err
    assert link.is_symlink() and (real / MARKER).is_file() and (real / "iter_0000000").is_dir()
    assert json.loads((real / MARKER).read_text())["state"] == "complete"
    assert sorted(p.name for p in (tree / "work").iterdir() if p.name.startswith(".")) == []
    # a symlink to a folder someone else wrote is refused before any work
    (tree / "work" / "theirs").mkdir()
    (tree / "work" / "theirs" / "data.bin").write_bytes(b"x")
    (tree / "work" / "link-theirs").symlink_to(tree / "work" / "theirs")
    status, err = _cli(tree, monkeypatch, capsys, *IMPORT, "link-theirs")
    assert status == 2 and "link-theirs (-> " in err and (tree / "work" / "theirs" / "data.bin").is_file()


_KILLED_DURING_SAVE = """
import os, signal, sys
from nemotron3_super.conversion import commands

real_save = commands.save_checkpoint

def save_then_die(*args, **kwargs):  # stands for the OOM killer arriving at the end of the save
    real_save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

commands.save_checkpoint = save_then_die
commands.import_checkpoint(sys.argv[1], sys.argv[2])
"""


def _tagged_processes(tag: str) -> list[int]:
    """pids of live processes whose environment carries ``tag`` (children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_sigkill_during_save_leaves_no_process_and_next_run_removes_the_partial(tree: Path, tmp_path: Path) -> None:
    """Case 4 (and 10: the script has no ``if __name__ == "__main__"``, which a spawned helper would re-run)."""
    tag = f"N3S_SAFETY_TAG_{os.getpid()}_{time.monotonic_ns()}"
    env = {**os.environ, tag: "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_DURING_SAVE, str(tree / "src" / "hf"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    time.sleep(1.0)
    assert _tagged_processes(tag) == []  # no checkpoint-writer helper outlives the killed command
    partial = list(tmp_path.glob(".out.partial-*"))
    assert len(partial) == 1 and not (tmp_path / "out").exists()
    from nemotron3_super.conversion.commands import import_checkpoint

    report = import_checkpoint(tree / "src" / "hf", tmp_path / "out")
    assert f"removed {partial[0]} (left by a conversion that died" in report.render("convert import")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unattributable_partial_folder_is_named_not_deleted(tree: Path, tmp_path: Path) -> None:
    from nemotron3_super.conversion.commands import import_checkpoint

    stray = tmp_path / ".out.partial-abc123"
    stray.mkdir()
    (stray / "data").write_text("whose?")
    report = import_checkpoint(tree / "src" / "hf", tmp_path / "out")
    assert f"left {stray} in place: an unfinished output without a readable" in report.render("convert import")
    assert (stray / "data").read_text() == "whose?"


def test_overwrite_of_own_output_replaces_it_cleanly(tree: Path, tmp_path: Path) -> None:
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.outputs import MARKER

    import_checkpoint(tree / "src" / "hf", tmp_path / "out")
    (tmp_path / "out" / "old-extra.txt").write_text("part of the old output")
    (tmp_path / "SENTINEL.txt").write_text("keep")
    import_checkpoint(tree / "src" / "hf", tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SENTINEL.txt", "out"]
    assert not (tmp_path / "out" / "old-extra.txt").exists() and (tmp_path / "out" / MARKER).is_file()
