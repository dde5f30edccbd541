"""Dotted command-line overrides (``section.field=value``) on a recipe's ConfigContainer, with the host's
Hydra/OmegaConf machinery; unknown keys are rejected with the closest valid key."""

from __future__ import annotations

import difflib
from typing import Any

from nemotron3_super.recipes.overrides_check import value_problems


class OverrideValueError(ValueError):
    """Override values that do not fit their fields (one line each, all of them at once)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid override value(s):\n" + "\n".join(f"  - {p}" for p in self.problems))


class ConfigKeyError(KeyError):
    """A dotted override names a key the ConfigContainer does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _dotted_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a plain dict/list tree (nodes and leaves) -> its value."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            out[path] = value
            out.update(_dotted_keys(value, path + "."))
    return out


def _plain_dict_at(cfg: Any, dotted: str) -> bool:
    """True if ``dotted`` names a plain dict inside ``cfg`` (where new keys are meaningful)."""
    node = cfg
    for part in filter(None, dotted.split(".")):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return isinstance(node, dict)


def _check_override_keys(cfg: Any, tree: dict[str, Any], overrides: list[str]) -> None:
    """Refuse keys the config lacks, suggesting the closest; '+' may add keys to plain dicts only; then
    values that do not fit their fields (:mod:`nemotron3_super.recipes.overrides_check`).

    Without this, Hydra adds a '+key' and the host's applier then skips it with a log line: a typo
    in a 64-GPU launch would silently train with the default.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    known = _dotted_keys(tree)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except Exception as exc:  # hydra's OverrideParseException: show its message, not a traceback
        raise ValueError(f"cannot parse overrides: {exc}") from None
    for override in parsed:
        key = override.key_or_group
        if key in known:
            continue
        parent = key.rpartition(".")[0]
        if override.is_add() and parent and _plain_dict_at(cfg, parent):
            continue  # e.g. +env_vars.NCCL_DEBUG=INFO
        guesses = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
        if not guesses:  # typo in the section: match the last part within the same section
            section, leaf = key.partition(".")[0], key.rpartition(".")[2]
            same = [k for k in known if k.startswith(section + ".")]
            guesses = [k for k in same if k.rpartition(".")[2] in
                       difflib.get_close_matches(leaf, [s.rpartition(".")[2] for s in same], n=3, cutoff=0.6)][:3]
        hint = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
        if parent and parent in known and known[parent] is None:
            hint += f" ({parent!r} is None in this recipe)"
        raise ConfigKeyError(f"unknown config key {key!r} in override {override.input_line!r}{hint}")
    problems = value_problems(cfg, parsed)
    if problems:
        raise OverrideValueError(problems)


def apply_cli_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``section.field=value`` overrides to a ConfigContainer (the host's Hydra syntax)."""
    if not overrides:
        return cfg
    from omegaconf import OmegaConf

    from megatron.bridge.training.utils.omegaconf_utils import (
        OverridesError, apply_overrides, create_omegaconf_dict_config, parse_hydra_overrides)

    tree, excluded = create_omegaconf_dict_config(cfg)
    _check_override_keys(cfg, OmegaConf.to_container(tree), overrides)
    try:
        tree = parse_hydra_overrides(tree, overrides)
    except OverridesError as exc:
        raise ValueError(str(exc)) from None
    apply_overrides(cfg, OmegaConf.to_container(tree, resolve=True), excluded)
    return cfg


def follow_train_iters(cfg: Any, overrides: list[str], recipe_warmup: int) -> None:
    """If only ``train.train_iters`` changed, stretch the LR schedule over the new length."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if "train.train_iters" in keys and not any(k.startswith("scheduler.") for k in keys):
        from nemotron3_super.recipes.builders import fit_schedule

        fit_schedule(cfg.scheduler, cfg.train.train_iters, recipe_warmup)
