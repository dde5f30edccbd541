"""``SuperBridge``: the host's conversion bridge for ``NemotronHForCausalLM``, built on this package's
name table (:mod:`nemotron3_super.bridge.table`) and its strict pairing checks
(:mod:`nemotron3_super.bridge.pairing`). ``conversion/`` uses both; nothing here imports ``conversion/``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from megatron.bridge.models.conversion.mapping_registry import MegatronMappingRegistry
from megatron.bridge.models.conversion.model_bridge import MegatronModelBridge
from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.bridge.pairing import check_host_tasks
from nemotron3_super.bridge.table import super_mappings
from nemotron3_super.hf_config import HF_ARCHITECTURE, MODEL_TYPE as HF_MODEL_TYPE, IncompleteConfigError, mtp_block_pattern
from nemotron3_super.hf_layout import FP32_HF_SUFFIX
from nemotron3_super.provider import SuperModelProvider


logger = logging.getLogger(__name__)


class SuperBridge(MegatronModelBridge):
    """Nemotron-H bridge: our provider, our name table, strict coverage.

    Registered by this library's plugin (not by import side effect); see ``plugins/host.py`` for the
    policy that decides whether it replaces the host's own ``NemotronHBridge``.
    """

    SOURCE_NAME = HF_ARCHITECTURE
    MODEL_TYPE = HF_MODEL_TYPE
    PROVIDER_CLASS = SuperModelProvider

    def provider_bridge(self, hf_pretrained: Any) -> Any:
        """A :class:`SuperModelProvider` for a config that describes a whole model (every spelling the
        host reads). A config that leaves out keys the model needs gets the host's generic Nemotron-H
        provider, as from the host's own bridge (logged): building it then fails where the host's would,
        and weights are never converted against it (the name table needs the whole model)."""
        config = getattr(hf_pretrained, "config", hf_pretrained)
        params_dtype = self.dtype_from_hf(config, default=None) if hasattr(config, "torch_dtype") else None
        overrides: dict[str, Any] = {}
        if params_dtype is not None:  # keep the checkpoint's dtype (bf16 for the released model)
            overrides = {"params_dtype": params_dtype, "bf16": params_dtype == torch.bfloat16,
                         "fp16": params_dtype == torch.float16}
        try:
            arch = SuperArchitecture.from_hf_config(config)
        except IncompleteConfigError as exc:
            logger.warning("%s: using the host's Nemotron-H provider for this partial config", exc)
            return NemotronHBridge().provider_bridge(hf_pretrained)
        return SuperModelProvider.from_architecture(arch, **overrides)

    @classmethod
    def megatron_to_hf_config(cls, provider: Any) -> dict:
        """config.json for a :class:`SuperModelProvider` (layer and MTP patterns; loads in transformers
        natively); for any other provider-like object, the host's Nemotron-H translation."""
        if isinstance(provider, SuperModelProvider):
            return provider.to_architecture().to_hf_config_dict()
        return NemotronHBridge.megatron_to_hf_config(provider)

    @classmethod
    def get_hf_tokenizer_kwargs(cls) -> dict:
        """Nemotron-H ships only a fast tokenizer (tokenizer.json)."""
        return {"use_fast": True}

    def mapping_registry(self) -> MegatronMappingRegistry:
        """The name table; only the MTP block's pattern comes from the attached HF config (none attached,
        or a partial one: as far as it says). Strictness is in :meth:`build_conversion_tasks`."""
        return MegatronMappingRegistry(*super_mappings(
            mtp_pattern=mtp_block_pattern(self.hf_config),
            num_experts=getattr(self.hf_config, "n_routed_experts", None) or 0))

    def maybe_modify_converted_hf_weight(self, task: Any, converted_weights_dict: dict, hf_state_dict: Any) -> dict:
        """Host export path: Megatron keeps A_log / D in FP32; on disk they are in the model dtype.
        Correction biases stay FP32. (``convert export`` instead restores each tensor's recorded dtype.)"""
        model_dtype = self.dtype_from_hf(self.hf_config, default=torch.bfloat16)
        return {name: t.float() if name.endswith(FP32_HF_SUFFIX) else
                t.to(model_dtype) if t.dtype == torch.float32 and model_dtype != torch.float32 else t
                for name, t in converted_weights_dict.items()}

    def build_conversion_tasks(self, hf_pretrained: Any, megatron_model: Any, weight_dtype: Any = None) -> list:
        """The host's tasks, but a Megatron parameter without a mapping or an HF tensor is an error."""
        tasks = super().build_conversion_tasks(hf_pretrained, megatron_model, weight_dtype=weight_dtype)
        check_host_tasks(self, hf_pretrained, megatron_model, tasks)
        return tasks
