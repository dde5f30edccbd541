"""Import a script from ``benchmarks/`` (not a package; its modules import each other by name, as when a
script runs from that folder): the folder goes on ``sys.path`` once."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    """``load("train_step")`` imports benchmarks/train_step.py as ``train_step``."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module(name)
    if Path(module.__file__).resolve().parent != BENCHMARKS:
        raise ImportError(f"{name!r} resolved to {module.__file__}, not benchmarks/{name}.py")
    return module
