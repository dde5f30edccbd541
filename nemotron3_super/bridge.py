"""HF <-> Megatron bridge for ``NemotronHForCausalLM`` with Super's provider.

The weight-name table is still the host's Nemotron-H one; what changes here is the provider: it is
built from our validated :class:`SuperArchitecture` (either config spelling, no Hub, no transformers
defaults) as a :class:`SuperModelProvider`, so Super's LatentMoE, FP32 router bias, squared-ReLU
experts and the MTP block trained at 2 repeated depths come out right.
"""

from __future__ import annotations

from typing import Any

from nemotron3_super.host_compat import ensure_host_importable
from nemotron3_super.provider import SuperModelProvider

ensure_host_importable()
from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge  # noqa: E402


class SuperBridge(NemotronHBridge):
    """Nemotron-H bridge whose provider is a :class:`SuperModelProvider`.

    Registered by this library's plugin (not by import side effect); see ``plugins/host.py`` for the
    policy that decides whether it replaces the host's own ``NemotronHBridge``.
    """

    def provider_bridge(self, hf_pretrained: Any) -> SuperModelProvider:
        config = getattr(hf_pretrained, "config", hf_pretrained)
        params_dtype = self.dtype_from_hf(config, default=None) if hasattr(config, "torch_dtype") else None
        overrides: dict[str, Any] = {}
        if params_dtype is not None:  # keep the checkpoint's dtype (bf16 for the released model)
            import torch

            overrides = {"params_dtype": params_dtype, "bf16": params_dtype == torch.bfloat16,
                         "fp16": params_dtype == torch.float16}
        return SuperModelProvider.from_hf_config(config, **overrides)
