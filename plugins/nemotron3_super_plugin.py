"""This library's own hook implementations: what ``pip install nemotron3-super`` gives a host.

Targets are import paths, so this module imports nothing heavy; the host adapter imports a target
only when it installs it.
"""

from __future__ import annotations

from nemotron3_super.hf_config import HF_ARCHITECTURE, MODEL_TYPE  # stdlib-only module
from nemotron3_super.plugins.hookspecs import hookimpl

_HYBRID_MODEL = "megatron.core.models.hybrid.hybrid_model:HybridModel"


@hookimpl
def register_model_providers(register) -> None:  # noqa: ANN001 - pluggy passes the callback
    register("nemotron3-super-120b-a12b", "nemotron3_super.provider:super_120b_a12b_provider",
             description="released Nemotron 3 Super 120B-A12B (88 layers, LatentMoE, MTP)")
    register("nemotron3-nano-30b-a3b", "nemotron3_super.provider:nano_30b_a3b_provider",
             description="Nemotron 3 Nano 30B-A3B (52 layers, no latent MoE, no MTP)")
    register("nemotron3-super-tiny", "nemotron3_super.provider:tiny_super_provider",
             description="tiny Super-shaped debug model (MEME*ME, MTP *E, latent MoE)")


@hookimpl
def register_bridges(register) -> None:  # noqa: ANN001
    register(HF_ARCHITECTURE, "nemotron3_super.bridge:SuperBridge", megatron_model=_HYBRID_MODEL,
             provider="nemotron3_super.provider:SuperModelProvider", model_type=MODEL_TYPE,
             description="Nemotron-H family with Super's LatentMoE, FP32 router bias and MTP")


@hookimpl
def register_recipes(register) -> None:  # noqa: ANN001
    from nemotron3_super.recipes import RECIPES  # a table of import paths; no torch, no megatron

    for name, info in RECIPES.items():
        register(name, info.target, mode=info.mode, description=info.description)
