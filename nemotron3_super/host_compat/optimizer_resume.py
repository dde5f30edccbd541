"""Distributed-optimizer resume with torch's AdamW (no Apex, no Transformer Engine).

megatron-core 0.19 without Apex or TE: resuming a distributed-optimizer checkpoint fails with
``assert len(steps) == 1`` in ``DistributedOptimizer.state_dict``. Loading asks for the optimizer's
state dict before any step, when torch's AdamW has no per-parameter state (so no ``step``) yet;
Apex/TE FusedAdam keep the step in the param groups and never hit it. The fix fills the empty states
as megatron-core's own ``init_state_fn`` does, plus ``step`` 0, right before that call (the checkpoint
then overwrites all of them, step included). Installed only when Apex/TE are absent.
"""

from __future__ import annotations

import logging
from types import ModuleType

from nemotron3_super.host_compat import hooks

logger = logging.getLogger(__name__)

HOST_MODULE = "megatron.core.optimizer.distrib_optimizer"


def patch_distrib_optimizer(distrib_optimizer: ModuleType) -> bool:
    """Wrap ``DistributedOptimizer.sharded_state_dict`` (once); returns whether the fix is active."""
    import torch

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


def install() -> None:
    """Patch the distributed optimizer when megatron-core's module is imported."""
    hooks.after_import(HOST_MODULE, patch_distrib_optimizer)
