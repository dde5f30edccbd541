"""megatron-core's Mamba layers with a mamba-ssm built without its CUDA extensions (CPU boxes).

mamba-ssm built with ``MAMBA_SKIP_CUDA_BUILD`` lacks its compiled Mamba-1 module ``selective_scan_cuda``,
which its ``__init__`` imports; megatron-core then treats mamba-ssm as absent and refuses to build
``MambaMixer``. Nemotron-H uses only the Mamba-2 (Triton) kernels, so when nothing else provides
``selective_scan_cuda`` and mamba-ssm is installed, an inert module that raises on any use stands in.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

STUBBED = "selective_scan_cuda"


class Mamba1Missing(AttributeError, RuntimeError):
    """Use of the stand-in. An AttributeError, so ``hasattr()`` says False: ``torch.compile`` (which
    megatron-core's MoE router uses) probes every loaded module and failed on a plain RuntimeError."""


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        def __getattr__(name: str) -> Any:  # noqa: N807 - module-level __getattr__
            if name.startswith("__"):
                raise AttributeError(name)
            raise Mamba1Missing(f"{STUBBED}.{name}: the Mamba-1 CUDA extension is not built "
                                "(Nemotron-H uses Mamba-2 only)")

        module.__getattr__ = __getattr__  # type: ignore[attr-defined]


class _FallbackFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: consulted only when no other finder has the real extension."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != STUBBED or importlib.util.find_spec("mamba_ssm") is None:
            return None
        return importlib.machinery.ModuleSpec(name, _StubLoader(), origin="nemotron3_super stand-in")


def install() -> None:
    """Register the fallback finder (idempotent; imports nothing)."""
    if not any(isinstance(f, _FallbackFinder) for f in sys.meta_path):
        sys.meta_path.append(_FallbackFinder())
