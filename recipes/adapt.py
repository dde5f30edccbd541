"""A parallel layout the user did not choose adapts to the GPUs present and to the model's shape.

The recipes' layouts are sized for the released model on its reference cluster (pretraining: 64 GPUs,
PP 2, EP 32). The upstream page's mock-data example runs the same script with
``model.hybrid_override_pattern="MEME*ME" model.num_layers=7`` on 8 GPUs, where that layout cannot start
(7 layers do not split over 2 stages; EP 32 does not fit 8 GPUs). Sizes the user set on the command line are
kept as given (a layout that still does not fit then fails with every problem named); the others take
the nearest layout that fits, and one line says what changed. Stdlib only, like ``layout.py``.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import replace
from typing import Any

from nemotron3_super.recipes.layout import Layout, LayoutError, _divisors, check_layout, layout_of

# Layout size -> the config field that sets it (model.* on the provider).
SIZE_FIELDS = {"tp": "tensor_model_parallel_size", "pp": "pipeline_model_parallel_size",
               "cp": "context_parallel_size", "ep": "expert_model_parallel_size"}


def set_by_user(overrides: list[str]) -> set[str]:
    """Dotted keys the overrides set (``model.tensor_model_parallel_size=8`` -> that key)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def _fits(layout: Layout, arch: Any, pattern: str | None) -> bool:
    try:
        check_layout(layout, arch, pattern=pattern)
    except LayoutError:
        return False
    return True


def _distance(new: Layout, old: Layout) -> tuple[float, int]:
    """How far a candidate is from the recipe's layout (log2 steps), then fewer pipeline stages."""
    return sum(abs(math.log2(getattr(new, f) / getattr(old, f))) for f in SIZE_FIELDS), new.pp


def adapt(layout: Layout, arch: Any, pattern: str | None, fixed: set[str]) -> Layout:
    """``layout`` when it fits; else the nearest fitting one that changes only sizes not in ``fixed``
    (layout names: tp, pp, cp, ep, sp); ``layout`` unchanged when none fits."""
    if _fits(layout, arch, pattern):
        return layout
    free = [f for f in SIZE_FIELDS if f not in fixed]
    options = [_divisors(layout.gpus) if f in free else [getattr(layout, f)] for f in SIZE_FIELDS]
    fitting = []
    for sizes in itertools.product(*options):
        candidate = replace(layout, **dict(zip(SIZE_FIELDS, sizes)))
        if "sp" not in fixed:  # sequence parallelism needs TP > 1, and megatron-core wants it with TP and EP
            candidate = replace(candidate, sp=candidate.tp > 1 and (layout.sp or candidate.ep > 1))
        if _fits(candidate, arch, pattern):
            fitting.append(candidate)
    return min(fitting, key=lambda c: _distance(c, layout)) if fitting else layout


def adapt_to_gpus(cfg: Any, overrides: list[str], gpus: int, arch: Any) -> str | None:
    """Apply :func:`adapt` to ``cfg`` (a ConfigContainer after overrides) for ``gpus`` GPUs; returns the
    note it printed to stderr, or None when nothing changed."""
    given = set_by_user(overrides)
    fixed = {f for f, field in SIZE_FIELDS.items() if f"model.{field}" in given}
    fixed |= {"sp"} if "model.sequence_parallel" in given else set()
    before = layout_of(cfg, gpus)
    after = adapt(before, arch, cfg.model.hybrid_layer_pattern, fixed)
    changes = [f"{f.upper()} {getattr(before, f)} -> {getattr(after, f)}" for f in (*SIZE_FIELDS, "sp")
               if getattr(before, f) != getattr(after, f)]
    if not changes:
        return None
    for f, field in SIZE_FIELDS.items():
        setattr(cfg.model, field, getattr(after, f))
    cfg.model.sequence_parallel = after.sp
    note = (f"note: the recipe's layout does not fit {gpus} GPUs and this model; adapted {', '.join(changes)} "
            f"(set model.{SIZE_FIELDS['tp']} / {SIZE_FIELDS['pp']} / {SIZE_FIELDS['ep']} to choose)")
    print(note, file=sys.stderr)
    return note
