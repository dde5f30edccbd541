"""Starting what a user starts, for the integration tests: torchrun launches on CPU (gloo) and the launch
modules' dry runs in the test process. One place for the free rendezvous port, the environment a launch must
not inherit from the test's own process, and the failure message with the launch's output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun; a test's own must not leak in


def free_port() -> int:
    """A free TCP port on this host (torchrun's ``--master-port 0`` hangs the gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict[str, str]:
    """This process's environment without the launcher's rank variables."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}


def torchrun(nproc: int, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node NPROC ARGS`` on a free port; fails the test with the output's tail on a
    non-zero exit, else returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-port",
           str(free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def dry_run(mode: str, argv: list[str], capsys: pytest.CaptureFixture,
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """``python -m nemotron3_super.<mode> ARGV`` through the launch module's ``main`` in this process (no second
    import of the host), outside any launch; returns (exit status, stdout, stderr) of that call alone."""
    from nemotron3_super.launch import main

    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    code = main(mode, argv)
    out, err = capsys.readouterr()
    return code, out, err
