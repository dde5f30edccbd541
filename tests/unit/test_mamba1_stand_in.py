"""The inert ``selective_scan_cuda`` stand-in (host_compat) must look absent to attribute probes:
torch.compile, which megatron-core's MoE router uses, walks every loaded module with hasattr()."""

from __future__ import annotations

import sys

import pytest

from nemotron3_super.host_compat import ensure_mamba_ssm_importable


def test_stand_in_answers_hasattr_false_and_says_why_on_use() -> None:
    ensure_mamba_ssm_importable()
    module = sys.modules.get("selective_scan_cuda")
    if module is None or getattr(module, "__file__", None):
        pytest.skip("no stand-in here: mamba-ssm is absent or its real Mamba-1 extension is installed")
    assert not hasattr(module, "torch") and not hasattr(module, "fwd")
    with pytest.raises(AttributeError, match="Mamba-1 CUDA extension is not built"):
        module.fwd
    with pytest.raises(RuntimeError):  # still a RuntimeError for callers that caught the old one
        module.bwd
