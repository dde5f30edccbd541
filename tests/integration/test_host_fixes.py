"""The host fixes on the real host modules, in a fresh interpreter (what a training process sees):
``import nemotron3_super`` first, then the host imports its modules and finds them fixed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_CODE = """
import json, sys
import nemotron3_super
import megatron.bridge  # reaches peft.lora_layers, whose TE import is unguarded
from megatron.bridge.peft import module_matcher, utils
from megatron.bridge.training import initialize
from megatron.core.optimizer import distrib_optimizer
from nemotron3_super.host_compat.lora_te_flags import TE_FLAGS
print(json.dumps({
    "te_imported": "transformer_engine" in sys.modules,
    "flags": sorted(f"{m.__name__}.{f}" for m in (utils, module_matcher) for f in TE_FLAGS[m.__name__]
                    if getattr(m, f)),
    "helpers_wrapped": getattr(initialize.compile_helpers, "_nemotron3_super", False),
    "resume_fixed": getattr(distrib_optimizer.DistributedOptimizer.sharded_state_dict, "_nemotron3_super", False),
    "apex_or_te": distrib_optimizer.HAVE_APEX_OR_TE,
}))
"""


def test_host_modules_are_fixed_when_the_host_imports_them() -> None:
    from nemotron3_super.host_compat.te_import import have_transformer_engine

    if have_transformer_engine():
        pytest.skip("Transformer Engine is installed: the TE fixes are meant to do nothing")
    out = subprocess.run([sys.executable, "-c", _CODE], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"te_imported": False, "flags": [], "helpers_wrapped": True,
                      "resume_fixed": not result["apex_or_te"], "apex_or_te": result["apex_or_te"]}
