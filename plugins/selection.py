"""``MEGATRON_BRIDGE_PLUGINS``: which discovered plugins load, and the names in it that match none.

Grammar: comma-separated items; ``name`` allows an entry point, ``-name`` denies it; ``name@distribution``
narrows either to one distribution (two distributions may declare the same entry-point name). Unset: all
load; set but empty (``""``): none load. Names are compared exactly (entry-point names are case-sensitive);
an item that matches no installed plugin is reported with the names available, because a typo would
otherwise load nothing (an allow-list) or keep a broken plugin (a deny-list) without a word.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable

ENV_SELECT = "MEGATRON_BRIDGE_PLUGINS"
_OTHER_SEPARATORS = re.compile(r"[;:|\s]+")


def parse_selection(value: str | None) -> tuple[set[str] | None, set[str]]:
    """``MEGATRON_BRIDGE_PLUGINS`` -> (allowed items or None for all, denied items)."""
    if value is None:
        return None, set()
    names = [n.strip() for n in value.split(",") if n.strip()]
    denied = {n[1:] for n in names if n.startswith("-")}
    allowed = {n for n in names if not n.startswith("-")}
    if not names:  # set but empty: load none
        return set(), set()
    return (allowed or None), denied


def normalize_distribution(name: str | None) -> str:
    """PEP 503 form, so ``My_Plugin`` and ``my-plugin`` name one distribution."""
    return re.sub(r"[-_.]+", "-", name or "").lower()


def matches(item: str, name: str, distribution: str | None) -> bool:
    """Whether a selection item (``name`` or ``name@distribution``) designates this entry point."""
    item_name, at, item_dist = item.partition("@")
    if item_name != name:
        return False
    return not at or normalize_distribution(item_dist) == normalize_distribution(distribution)


def is_selected(name: str, distribution: str | None, allowed: set[str] | None, denied: set[str]) -> bool:
    if any(matches(item, name, distribution) for item in denied):
        return False
    return allowed is None or any(matches(item, name, distribution) for item in allowed)


def unmatched(value: str | None, installed: Iterable[tuple[str, str | None]]) -> list[str]:
    """The items of ``value``, as written (``-`` included), that designate no installed (name, distribution)."""
    installed = list(installed)
    items = dict.fromkeys(n.strip() for n in (value or "").split(",") if n.strip())
    return [item for item in items if not any(matches(item.removeprefix("-"), n, d) for n, d in installed)]


def describe_unmatched(value: str, items: list[str], installed: Iterable[tuple[str, str | None]]) -> str:
    """One line: the items at fault, a likely intended name for each, and every installed plugin."""
    dists: dict[str, list[str]] = {}
    for name, dist in installed:
        dists.setdefault(name, []).append(dist or "?")
    names = sorted(dists)
    faults = [f"{item!r}{_hint(item, names)}" for item in items]
    available = ", ".join(f"{n} ({', '.join(sorted(dists[n]))})" for n in names) or "none"
    return (f"{ENV_SELECT}={value!r} names no installed plugin: {', '.join(faults)}; installed plugins "
            f"(distributions): {available}; separate names with ','")


def _hint(item: str, names: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a wrong case, a near miss or another separator; else ``""``."""
    parts = [p for p in _OTHER_SEPARATORS.split(item) if p]
    fixed = ",".join(_fix(part, names) for part in parts)
    if fixed != item:
        return f" (did you mean {fixed!r}?)"
    name, at, dist = item.removeprefix("-").partition("@")
    if at and name in names:
        return f" (no distribution {dist!r} declares {name!r})"
    return ""


def _fix(item: str, names: list[str]) -> str:
    """``item`` with its entry-point name replaced by the closest installed one (sign and distribution kept)."""
    sign = "-" if item.startswith("-") else ""
    name, at, dist = item.removeprefix("-").partition("@")
    return sign + (_closest(name, names) or name) + at + dist


def _closest(name: str, names: list[str]) -> str | None:
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None
