"""Values of dotted overrides, checked against the config dataclasses' annotations and, where the meaning is
clear, a range; every problem is one line naming the override, what it got and what was expected.

Why here and not in the host: Hydra parses ``train.train_iters=abc`` as the string ``'abc'``, and the host's
applier then sets it as given. The run fails minutes later with a ``TypeError`` deep in the scheduler, or
not at all (``model.sequence_parallel=maybe`` is truthy; ``optimizer.lr=-1`` trains backwards). Stdlib only:
it reads annotations, it imports nothing of the host.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

# dotted key -> (lowest allowed value, whether the bound itself is allowed, what the value means)
RANGES: dict[str, tuple[float, bool, str]] = {
    "train.train_iters": (0, False, "training iterations"),
    "train.global_batch_size": (0, False, "sequences per step"),
    "train.micro_batch_size": (0, False, "sequences per micro-batch"),
    "train.eval_iters": (0, True, "evaluation iterations"),
    "train.eval_interval": (0, False, "iterations between evaluations"),
    "optimizer.lr": (0, True, "a learning rate"),
    "optimizer.min_lr": (0, True, "a learning rate"),
    "optimizer.weight_decay": (0, True, "a weight decay"),
    "optimizer.clip_grad": (0, True, "a gradient-norm bound"),
    "optimizer.adam_eps": (0, False, "Adam's epsilon"),
    "scheduler.lr_warmup_iters": (0, True, "warmup iterations"),
    "scheduler.lr_decay_iters": (0, False, "decay iterations"),
    "scheduler.lr_wsd_decay_iters": (0, True, "WSD decay iterations"),
    "checkpoint.save_interval": (0, False, "iterations between saves"),
    "model.seq_length": (0, False, "tokens per sequence"),
    "dataset.seq_length": (0, False, "tokens per sequence"),
    "model.num_layers": (0, False, "layers"),
    **{f"model.{size}": (1, True, "a parallel size") for size in (
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
        "expert_model_parallel_size", "expert_tensor_parallel_size")},
}
UNIT_INTERVAL = ("optimizer.adam_beta1", "optimizer.adam_beta2")  # in [0, 1)


def owner_and_field(cfg: Any, key: str) -> tuple[Any, dataclasses.Field | None]:
    """The object holding the last part of dotted ``key`` and that part's dataclass field (None: not a
    dataclass field, e.g. a key inside a plain dict)."""
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    if node is None or isinstance(node, dict) or not dataclasses.is_dataclass(node):
        return node, None
    return node, next((f for f in dataclasses.fields(node) if f.name == leaf), None)


def _annotation(owner: Any, field: dataclasses.Field) -> Any:
    """The field's annotation as a type (a string annotation the module cannot resolve stays a string)."""
    try:
        return typing.get_type_hints(type(owner)).get(field.name, field.type)
    except Exception:  # noqa: BLE001 - forward references to modules not imported: check nothing
        return field.type


def type_problem(value: Any, annotation: Any) -> str | None:
    """What ``value`` (as Hydra parsed it) should have been for ``annotation``; None when it fits or when the
    annotation is one this check does not model (it then accepts)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return None
        problems = [type_problem(value, a) for a in members]
        if any(p is None for p in problems):
            return None
        return " or ".join(dict.fromkeys(p for p in problems if p))
    if origin is typing.Literal:
        return None if value in args else f"one of {', '.join(repr(a) for a in args)}"
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if annotation is str:
        return None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "a string"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        names = [m.name for m in annotation] + [m.value for m in annotation]
        return None if value in names or isinstance(value, annotation) else \
            f"one of {', '.join(m.name for m in annotation)}"
    if origin in (list, tuple) and args and isinstance(value, (list, tuple)):
        inner = [type_problem(v, args[0]) for v in value]
        return next((f"a list of {p}" for p in inner if p), None)
    return None


def range_problem(key: str, value: Any) -> str | None:
    """The range a number under ``key`` must lie in, when ``value`` is outside it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if key in RANGES:
        low, inclusive, meaning = RANGES[key]
        if value < low or (value == low and not inclusive):
            return f"{'>=' if inclusive else '>'} {low:g} ({meaning})"
    if key in UNIT_INTERVAL and not 0 <= value < 1:
        return "in [0, 1) (an Adam beta)"
    return None


def value_problems(cfg: Any, parsed: list[Any]) -> list[str]:
    """One line per override (Hydra ``Override`` objects) whose value does not fit its field."""
    problems = []
    for override in parsed:
        if override.is_delete():
            continue
        key, value = override.key_or_group, override.value()
        owner, field = owner_and_field(cfg, key)
        expected = type_problem(value, _annotation(owner, field)) if field is not None else None
        expected = expected or range_problem(key, value)
        if expected:
            where = f"{type(owner).__name__}.{field.name}" if field is not None else key
            problems.append(f"{override.input_line}: got {value!r}, expected {expected} ({where})")
    return problems
