"""Makes the host (Megatron-Bridge 0.6.x) importable on machines without Transformer Engine.

``megatron/bridge/peft/lora_layers.py`` does an unguarded ``import transformer_engine.pytorch as te``
and ``import megatron.bridge`` reaches it through AutoBridge, so conversion fails on every CPU box.
When (and only when) TE cannot be found, :func:`ensure_host_importable` installs an import hook that
compiles that one module with the import bound to an inert namespace. ``transformer_engine`` is NOT
put into ``sys.modules``: megatron-core's ``HAVE_TE`` stays False and it keeps its local modules.
TE-fused LoRA layers are then unusable (they never were without TE); nothing else changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
from types import ModuleType

logger = logging.getLogger(__name__)

_PATCHED_MODULE = "megatron.bridge.peft.lora_layers"
_TE_IMPORT = "import transformer_engine.pytorch as te"


def have_transformer_engine() -> bool:
    """True when the TE PyTorch extension is installed (not necessarily usable without a GPU)."""
    try:
        return importlib.util.find_spec("transformer_engine") is not None and (
            importlib.util.find_spec("transformer_engine.pytorch") is not None
        )
    except (ImportError, ValueError):
        return False


class _AbsentTE(type):
    """``te.Anything`` is a fresh empty class: ``isinstance(x, te.Linear)`` is False, nothing more."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _AbsentTE(f"absent_te.{name}", (), {})


ABSENT_TE = _AbsentTE("absent_transformer_engine_pytorch", (), {})


class _LoraLayersLoader(importlib.abc.Loader):
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        with open(self.origin, encoding="utf-8") as fh:
            source = fh.read()
        if _TE_IMPORT not in source:  # host changed: import it unmodified and let it say what it needs
            exec(compile(source, self.origin, "exec"), module.__dict__)
            return
        source = source.replace(_TE_IMPORT, "from nemotron3_super.host_compat import ABSENT_TE as te", 1)
        exec(compile(source, self.origin, "exec"), module.__dict__)


class _HostCompatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path, target=None):  # noqa: ANN001 - importlib protocol
        if name != _PATCHED_MODULE or have_transformer_engine():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None:
            return None
        return importlib.util.spec_from_loader(name, _LoraLayersLoader(spec.origin), origin=spec.origin)


def ensure_host_importable() -> None:
    """Install the TE-absent import hook once (idempotent; a no-op when TE is installed)."""
    if any(isinstance(f, _HostCompatFinder) for f in sys.meta_path):
        return
    if _PATCHED_MODULE in sys.modules:
        return  # already imported (TE present, or someone else handled it)
    if not have_transformer_engine():
        logger.info("Transformer Engine not found: importing Megatron-Bridge with its TE-only LoRA layers inert")
    sys.meta_path.insert(0, _HostCompatFinder())


class _Mamba1Missing(AttributeError, RuntimeError):
    """Use of the inert ``selective_scan_cuda`` stand-in."""


def ensure_mamba_ssm_importable() -> None:
    """mamba-ssm built with MAMBA_SKIP_CUDA_BUILD lacks its compiled Mamba-1 module ``selective_scan_cuda``,
    which its ``__init__`` imports; megatron-core then treats mamba-ssm as absent and refuses to build
    MambaMixer. Nemotron-H uses only the Mamba-2 (Triton) kernels, so an inert module that raises on any
    use is registered, only when mamba-ssm is installed and the real extension is not (idempotent)."""
    if "selective_scan_cuda" in sys.modules or importlib.util.find_spec("mamba_ssm") is None:
        return
    if importlib.util.find_spec("selective_scan_cuda") is not None:
        return
    stub = types.ModuleType("selective_scan_cuda")

    def __getattr__(name: str):  # noqa: N807 - module-level __getattr__
        if name.startswith("__"):
            raise AttributeError(name)
        # an AttributeError (hasattr() is False: torch.compile probes every loaded module) that says why
        raise _Mamba1Missing(f"selective_scan_cuda.{name}: the Mamba-1 CUDA extension is not built "
                             "(Nemotron-H uses Mamba-2 only)")

    stub.__getattr__ = __getattr__
    sys.modules["selective_scan_cuda"] = stub


_TE_FLAGS = {  # host module -> its "TE is here" flags (Megatron-Bridge 0.6.x)
    "megatron.bridge.peft.utils": ("HAVE_TE", "HAVE_TE_COL_LINEAR", "HAVE_TE_LN_COL_LINEAR", "HAVE_TE_ROW_LINEAR",
                                   "HAVE_TE_LINEAR", "HAVE_TE_COL_GRP_LINEAR", "HAVE_TE_ROW_GRP_LINEAR"),
    "megatron.bridge.peft.module_matcher": ("HAVE_TE", "HAVE_TE_COL_LINEAR", "HAVE_TE_LN_COL_LINEAR",
                                            "HAVE_TE_ROW_LINEAR"),
}


def align_host_te_flags() -> list[str]:
    """Without Transformer Engine, megatron-core still defines placeholder ``TE*`` classes, so the host's
    LoRA modules compute ``HAVE_TE = True`` and wrap local linears as if they were TE ones (wrong
    feature sizes at TP > 1, TE-only calls). Sets those flags to False, as they are in fact; returns the
    ones changed. A no-op when TE is installed. Call before LoRA is applied (launch, LoRA recipes)."""
    if have_transformer_engine():
        return []
    ensure_host_importable()
    import importlib

    changed = []
    for module_name, flags in _TE_FLAGS.items():
        module = importlib.import_module(module_name)
        for flag in flags:
            if getattr(module, flag, False):
                setattr(module, flag, False)
                changed.append(f"{module_name}.{flag}")
    if changed:
        logger.info("Transformer Engine not found: host LoRA uses its non-TE paths (%d flags corrected)", len(changed))
    return changed


def ensure_te_free_optimizer_resume() -> bool:
    """megatron-core 0.19 without Apex or TE (torch's AdamW): resuming a distributed-optimizer checkpoint
    fails with ``assert len(steps) == 1`` in ``DistributedOptimizer.state_dict``. Loading asks for the
    optimizer's state dict before any step, when torch's AdamW has no per-parameter state (so no
    ``step``) yet; Apex/TE FusedAdam keep the step in the param groups and never hit it. This fills the
    empty states as megatron-core's own ``init_state_fn`` does, plus ``step`` 0, right before that call
    (the checkpoint then overwrites all of them, step included). Installed only when Apex/TE are
    absent; returns whether it is active. Idempotent."""
    import torch
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return False
    cls = distrib_optimizer.DistributedOptimizer
    if getattr(cls.sharded_state_dict, "_nemotron3_super", False):
        return True
    original = cls.sharded_state_dict

    def sharded_state_dict(self, model_sharded_state_dict=None, is_loading=False, sharding_type=None,
                           metadata=None):
        if is_loading and len(self.optimizer.state) == 0 and self.init_state_fn is not None:
            self.init_state_fn(self.optimizer, self.config)
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    self.optimizer.state[param].setdefault("step", torch.tensor(0.0))
        return original(self, {} if model_sharded_state_dict is None else model_sharded_state_dict,
                        is_loading, sharding_type, metadata)

    sharded_state_dict._nemotron3_super = True  # type: ignore[attr-defined]
    sharded_state_dict.__doc__ = original.__doc__
    cls.sharded_state_dict = sharded_state_dict
    logger.info("Apex/TE not found: distributed-optimizer resume initialises torch AdamW state before loading")
    return True
