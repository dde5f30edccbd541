"""Shared by the GPU tests that go through the launch modules and the host's training loop."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

LOSS_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ .*?lm loss:\s*([0-9.eE+-]+)")

# The GPU machine lacks nvidia-resiliency-ext and nvidia-modelopt (imported by the host's training loop);
# its payload's ``optional_stubs`` stand in for them (async save and in-process restart stay off), and
# modelopt's distillation hook is made to answer "none", as the real package does.
_LAUNCHER = textwrap.dedent("""
    import runpy, sys
    try:
        import optional_stubs  # GPU payload only: stand-ins for packages the host imports but we never use
        stubbed = optional_stubs.install(verbose=False)
    except ImportError:
        stubbed = []
    if "modelopt" in stubbed:  # a stand-in returns stand-ins; the host asks it for a distillation hook
        import modelopt.torch.distill.plugins.megatron as distill
        distill.get_tensor_shapes_adjust_fn_for_distillation = lambda *args, **kwargs: None
    module = sys.argv.pop(1)
    sys.argv[0] = module
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_training(workdir: Path, module: str, args: list[str], log_name: str,
                 timeout: int = 540) -> tuple[dict[int, float], str]:
    """``torchrun --nproc-per-node=1 -m <module> <args>`` (one GPU); returns {iteration: lm loss} and the
    log (also written to ``workdir/<log_name>.log``); fails the test with the log's tail on a non-zero exit."""
    script = workdir / "launch_module.py"
    script.write_text(_LAUNCHER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", f"--master-port={free_port()}",
           str(script), module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    log = proc.stdout + proc.stderr
    (workdir / f"{log_name}.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    for line in log.splitlines():  # the host's memory report after iterations 1 and 2 (peak_allocated_mem, GB)
        if "memory (GB)" in line:
            print(f"[{log_name}] {line.strip()}")
    return {int(i): float(x) for i, x in LOSS_LINE.findall(log)}, log
