"""What the start-up hook (``nemotron3_super.pth``) costs a Python process that never imports megatron.

The .pth line only puts a trigger on ``sys.meta_path``; this package is imported when (and if) the process
imports ``megatron``. Measured in fresh interpreters, as CPU time (``time.process_time``: stable on a shared,
loaded machine, where wall time mostly measures waiting): executing the .pth line, and the whole
``python -c pass`` start with the hook on and with the off switch ``MEGATRON_BRIDGE_PLUGINS=""`` (the .pth line then imports nothing of this package: the
baseline). Medians over ``--runs``. Target: < 2 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

REIMPORT = """
import sys, time
from nemotron3_super._build import PTH_LINE  # outside the timed part
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "Nemotron3SuperTrigger"]
t0 = time.process_time_ns()
exec(PTH_LINE)  # what site does with the line at start-up
print(time.process_time_ns() - t0)
"""


# Calibration on the same machine at the same moment: two small stdlib modules no start-up imports.
REFERENCE = """
import time
t0 = time.process_time_ns()
import colorsys, fnmatch
print(time.process_time_ns() - t0)
"""


def hook_cpu_ms(env: dict[str, str], code: str = REIMPORT) -> float:
    """CPU ms of importing the hook module and installing the finder, in one fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip()) / 1e6


def start_cpu_ms(env: dict[str, str]) -> float:
    """CPU ms (user + sys) of a whole ``python -c pass``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "MEGATRON_BRIDGE_PLUGINS"}
    off = {**base, "MEGATRON_BRIDGE_PLUGINS": ""}
    hook = statistics.median(hook_cpu_ms(base) for _ in range(args.runs))
    reference = statistics.median(hook_cpu_ms(off, REFERENCE) for _ in range(args.runs))
    start_on = statistics.median(start_cpu_ms(base) for _ in range(args.runs))
    start_off = statistics.median(start_cpu_ms(off) for _ in range(args.runs))
    print(f"| what (CPU time, median of {args.runs} fresh interpreters) | ms |")
    print("| --- | --- |")
    print(f"| the .pth line (trigger on sys.meta_path) | {hook:.3f} |")
    print(f"| reference: import colorsys, fnmatch (stdlib, same machine and moment) | {reference:.2f} |")
    print(f"| `python -c pass`, hook on (default) | {start_on:.1f} |")
    print(f'| `python -c pass`, off switch `MEGATRON_BRIDGE_PLUGINS=""` | {start_off:.1f} |')


if __name__ == "__main__":
    main()
