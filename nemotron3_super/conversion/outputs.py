"""Output folders of the conversion commands: what may be written where, and what may be replaced.

Rules (checked before any work starts, all paths resolved, so a symlinked output is its target):

- an output is never the working directory or one of its ancestors, never below a file;
- it never is, contains or lies inside an input folder;
- an existing non-empty folder is replaced only with ``overwrite`` and only when it carries
  :data:`MARKER` (this tool wrote it); an empty folder may be filled; files are never replaced;
- it is written into a hidden ``.NAME.partial-*`` sibling that carries :data:`MARKER` from its first
  moment (with the writer's pid) and is renamed at the end. Later runs remove partial folders whose
  writer is gone and name the ones they cannot attribute.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch.distributed as dist

#: The one name of the file that says "nemotron3-super wrote this folder" (in every output it writes).
MARKER = ".nemotron3-super-output.json"
_PARTIAL = ".{name}.partial-"
_OLD = ".{name}.replaced-"


class OutputError(ValueError):
    """An output path this tool must not write or replace; the message names the paths and the reason."""


def is_ours(folder: Path) -> bool:
    """True when ``folder`` carries this tool's marker file."""
    return (folder / MARKER).is_file()


def check_output(path: str | Path, overwrite: bool, inputs: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Validate an output path before any work; returns it resolved (symlinks followed).

    ``inputs`` are (label, path) pairs of the folders the command reads, e.g. ("--hf-model", "hf")."""
    given = Path(path)
    target = given.resolve()
    shown = f"{given}" + (f" (-> {target})" if given.is_symlink() else "")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"output {shown}: {parent} is a file, so no folder can be created below it")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise OutputError(f"output {shown} is {'the working directory' if target == cwd else 'an ancestor of the working directory ' + str(cwd)}"
                          ": refusing to write (or replace) it; name a new folder, e.g. ./converted")
    for label, folder in inputs:
        source = Path(folder).resolve()
        if target == source or target in source.parents:
            relation = "is" if target == source else "contains"
            raise OutputError(f"output {shown} {relation} the input {label} {folder}: refusing "
                              "(--overwrite would delete what the conversion reads); choose another output")
        if source in target.parents:
            raise OutputError(f"output {shown} lies inside the input {label} {folder}: refusing to write "
                              "into an input folder; choose an output outside it")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"output {shown} exists and is not a folder: refusing to replace it "
                              "(remove it yourself or choose another path)")
        if any(target.iterdir()):
            if not overwrite:
                raise OutputError(f"{shown}: exists and is not empty (pass --overwrite to replace it)")
            if not is_ours(target):
                raise OutputError(f"{shown}: exists, is not empty and was not written by nemotron3-super (no "
                                  f"{MARKER} inside): --overwrite replaces only folders this tool wrote, or "
                                  "empty ones; remove it yourself or choose another path")
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(target: Path) -> list[str]:
    """Remove ``.NAME.partial-*`` / ``.NAME.replaced-*`` siblings of ``target`` left by runs that died
    (marker present, writer pid gone on this host); returns one note per folder removed or kept."""
    notes = []
    host = socket.gethostname()
    patterns = (_PARTIAL.format(name=target.name) + "*", _OLD.format(name=target.name) + "*")
    for stale in sorted(p for pattern in patterns for p in target.parent.glob(pattern)):
        try:
            owner = json.loads((stale / MARKER).read_text())
        except (OSError, ValueError):
            notes.append(f"left {stale} in place: an unfinished output without a readable {MARKER} "
                         "(remove it if no conversion is writing it)")
            continue
        if owner.get("host") == host and not _alive(int(owner.get("pid", -1))):
            shutil.rmtree(stale, ignore_errors=True)  # guarded: our marker, its writer is dead
            notes.append(f"removed {stale} (left by a conversion that died, pid {owner.get('pid')})")
        else:
            notes.append(f"left {stale} in place: pid {owner.get('pid')} on {owner.get('host')} may still be "
                         "writing it")
    return notes


def _write_marker(folder: Path, state: str, **extra: object) -> None:
    from nemotron3_super import __version__

    record = {"tool": "nemotron3-super", "version": __version__, "state": state, "pid": os.getpid(),
              "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    (folder / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def remove_own(folder: Path) -> None:
    """Delete a folder this tool wrote (its marker is checked again right before) or an empty one."""
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{folder}: refusing to delete (not a real folder)")
    if any(folder.iterdir()) and not is_ours(folder):
        raise OutputError(f"{folder}: refusing to delete a folder without {MARKER} (not written by nemotron3-super)")
    shutil.rmtree(folder)


def shared_temp_dir(parent: Path, prefix: str) -> Path:
    """A temporary folder made (and marked) by rank 0, the same path on every rank."""
    path = None
    if dist.get_rank() == 0:
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        _write_marker(Path(path), "partial")
    box = [path]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return Path(box[0])


@contextlib.contextmanager
def staged_output(target: Path, notes: list[str] | None = None, **record: object) -> Iterator[Path]:
    """An empty marked folder beside ``target`` (from :func:`check_output`; the same on every rank); on
    success it replaces ``target``, on error it is removed. ``record`` goes into the final marker. Call
    inside the process group."""
    if dist.get_rank() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        found = sweep_stale(target)
        if notes is not None:
            notes.extend(found)
    dist.barrier()
    tmp = shared_temp_dir(target.parent, _PARTIAL.format(name=target.name))
    try:
        yield tmp
        dist.barrier()
    except BaseException:
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # our own partial folder
        raise
    if dist.get_rank() == 0:
        _write_marker(tmp, "complete", **record)
        old = None
        if target.exists():  # checked by check_output; moved aside first, so the swap is one rename
            old = Path(tempfile.mkdtemp(prefix=_OLD.format(name=target.name), dir=target.parent))
            _write_marker(old, "replaced")
            os.replace(target, old / "content")  # refuses nothing: check_output guaranteed ours or empty
        os.replace(tmp, target)
        if old is not None:
            remove_own(old / "content") if any((old / "content").iterdir()) else (old / "content").rmdir()
            (old / MARKER).unlink()
            old.rmdir()
    dist.barrier()
