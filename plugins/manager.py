"""Discovers Megatron-Bridge plugins through entry points and collects what they register.

Properties a host can rely on:
- isolated: a plugin that fails to import, to register with pluggy, or inside one of its hooks is
  reported (name, distribution, version, error), keeps none of its registrations, and the others still
  load; ``strict`` re-raises;
- no silent winner: a (kind, name) that two plugins register is given to neither and reported with
  both plugins and distributions; each keeps its other registrations; ``strict`` raises;
- keyed by (entry-point name, distribution): a second distribution using a name loads beside the first;
- switchable: ``MEGATRON_BRIDGE_PLUGINS`` unset loads all, ``""`` loads none, ``"a,b"`` loads only
  those, ``"-a"`` loads all but ``a`` (the escape hatch when one plugin breaks a job), ``a@dist`` picks one
  distribution's ``a``; an item matching no installed plugin is reported (see ``selection.py``);
- idempotent: the result is cached per group and switch, so calling it in every torchrun rank or
  from several places costs one discovery;
- lazy: only the plugins' hook modules are imported; registrations are import paths, so listing
  plugins imports neither torch nor megatron.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, Callable

import pluggy

from nemotron3_super.plugins import hookspecs
from nemotron3_super.plugins.selection import (  # noqa: F401 - parse_selection re-exported
    ENV_SELECT,
    describe_unmatched,
    is_selected,
    normalize_distribution,
    parse_selection,
    unmatched,
)

logger = logging.getLogger(__name__)

ENV_STRICT = "MEGATRON_BRIDGE_PLUGINS_STRICT"

KINDS = ("model_provider", "bridge", "recipe")
_HOOK_OF_KIND = {"model_provider": "register_model_providers", "bridge": "register_bridges", "recipe": "register_recipes"}
_TARGET_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class PluginLoadError(RuntimeError):
    """A plugin could not be loaded or registered; raised only in strict mode."""


def import_target(target: str, *, context: str) -> Any:
    """Import ``"package.module:Attr.sub"``; a failure names ``context`` and the target."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise PluginLoadError(f"{context}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    return obj


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered: a provider, a bridge or a recipe, by import path."""

    kind: str
    name: str
    target: str
    plugin: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def load(self) -> Any:
        """Import the target; errors name the plugin and the registration."""
        return import_target(self.target, context=f"plugin {self.plugin!r}: {self.kind} {self.name!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "target": self.target, **self.metadata}


@dataclass
class PluginInfo:
    """A discovered plugin: where it comes from, what it registered and what went wrong."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: list[str] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: how messages and ``MEGATRON_BRIDGE_PLUGINS`` name it: ``name``, or ``name@distribution`` when two
    #: distributions declare the same entry-point name
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def loaded(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": self.hooks,
            "registrations": [r.as_dict() for r in self.registrations],
            "errors": self.errors,
        }


@dataclass(frozen=True)
class Claim:
    """One plugin's registration of a name that another plugin registered too."""

    plugin: str
    distribution: str | None
    version: str | None
    target: str

    def describe(self) -> str:
        return f"plugin {self.plugin!r} ({_origin(self.distribution, self.version)}: {self.target})"


@dataclass(frozen=True)
class Clash:
    """Two or more plugins registered the same (kind, name). None of them gets it: which one a host
    would run must not depend on install order or on how the plugins' names sort."""

    kind: str
    name: str
    claims: tuple[Claim, ...]

    def message(self) -> str:
        deny = " or ".join(f"-{c.plugin}" for c in self.claims)
        refused = "both" if len(self.claims) == 2 else f"all {len(self.claims)}"
        return (f"plugin clash: {self.kind} {self.name!r} is registered by "
                + " and by ".join(c.describe() for c in self.claims)
                + f"; the name is refused to {refused} (to keep one, deny the others: {ENV_SELECT}={deny})")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "plugins": [vars(c) for c in self.claims]}


_SERIALS = itertools.count(1)


@dataclass
class PluginSet:
    """What discovery found: every plugin (loaded or not), the accepted registrations, the names refused
    because plugins clash on them, and the ``MEGATRON_BRIDGE_PLUGINS`` items that match no plugin.
    ``serial`` identifies this set for caches (unlike ``id()``, it is never reused after garbage collection)."""

    plugins: list[PluginInfo]
    skipped: list[str]
    clashes: list[Clash] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    selection_error: str | None = None
    serial: int = field(default_factory=lambda: next(_SERIALS), compare=False)

    @property
    def registrations(self) -> list[Registration]:
        return [r for p in self.plugins for r in p.registrations]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.errors]

    def problems(self) -> list[str]:
        """One line each: failed plugins, clashes, selection items matching nothing (strict mode raises them)."""
        lines = [_describe_failure(info) for info in self.failed] + [c.message() for c in self.clashes]
        return lines + ([self.selection_error] if self.selection_error else [])

    def of_kind(self, kind: str) -> list[Registration]:
        return [r for r in self.registrations if r.kind == kind]

    def get(self, kind: str, name: str) -> Registration:
        for reg in self.of_kind(kind):
            if reg.name == name:
                return reg
        known = ", ".join(sorted(r.name for r in self.of_kind(kind))) or "none"
        clash = next((f"; {c.message()}" for c in self.clashes if (c.kind, c.name) == (kind, name)), "")
        raise KeyError(f"no {kind} named {name!r} is registered by any plugin (registered: {known}){clash}")


def _strict_from_env() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


_CACHE: dict[tuple[str, str | None], PluginSet] = {}


def load_plugins(
    *, group: str = hookspecs.ENTRY_POINT_GROUP, strict: bool | None = None, refresh: bool = False
) -> PluginSet:
    """Discover plugins of ``group`` and collect their registrations (cached; ``refresh`` rediscovers).

    Strict (argument, else ``MEGATRON_BRIDGE_PLUGINS_STRICT``): any of :meth:`PluginSet.problems` raises.
    """
    strict = _strict_from_env() if strict is None else strict
    selection = os.environ.get(ENV_SELECT)
    key = (group, selection)
    if not refresh and key in _CACHE:
        result = _CACHE[key]
    else:
        result = _discover(group, selection)
        _CACHE[key] = result
    if strict and result.problems():
        raise PluginLoadError("; ".join(result.problems()))
    return result


def _origin(distribution: str | None, version: str | None) -> str:
    return f"{distribution} {version}" if distribution else "unknown distribution"


def _describe_failure(info: PluginInfo) -> str:
    return (f"plugin {info.label!r} ({_origin(info.distribution, info.version)}, module {info.module}) failed: "
            + "; ".join(info.errors))


def _entry_points(group: str) -> list[tuple[metadata.EntryPoint, str | None, str | None]]:
    """(entry point, distribution, version), in a fixed order: name, then distribution."""
    found = []
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        found.append((ep, dist.name if dist else None, dist.version if dist else None))
    return sorted(found, key=lambda e: (e[0].name, normalize_distribution(e[1]), e[0].value))


def _discover(group: str, selection: str | None) -> PluginSet:
    """Plugins are keyed by (entry-point name, distribution): a second distribution declaring a name
    already in use loads beside the first, it does not displace it."""
    allowed, denied = parse_selection(selection)
    found = _entry_points(group)
    names = Counter(ep.name for ep, _, _ in found)
    plugins: list[PluginInfo] = []
    skipped: list[str] = []
    for ep, dist, version in found:
        label = ep.name if names[ep.name] == 1 else f"{ep.name}@{dist}"
        if not is_selected(ep.name, dist, allowed, denied):
            skipped.append(label)
            continue
        info = PluginInfo(name=ep.name, distribution=dist, version=version, module=ep.value, label=label)
        _load(ep, info)
        plugins.append(info)
    installed = [(ep.name, dist) for ep, dist, _ in found]
    result = PluginSet(plugins=plugins, skipped=skipped, clashes=_refuse_clashes(plugins),
                       unmatched=unmatched(selection, installed))
    if result.unmatched:
        result.selection_error = describe_unmatched(selection or "", result.unmatched, installed)
    for line in [c.message() for c in result.clashes] + [result.selection_error or ""]:
        if line:
            logger.warning("%s", line)
    return result


def _format_exc(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _load(ep: metadata.EntryPoint, info: PluginInfo) -> None:
    """Import one plugin and call its hooks, in a plugin manager of its own. All or nothing: a plugin whose
    import or any hook fails keeps none of its registrations (a half-registered plugin is worse than none)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pending: list[Registration] = []
    stage = ""
    try:
        pm.register(ep.load(), name=info.label)
        pm.check_pending()  # a hookimpl with no matching spec is a plugin bug, not silence
        for kind in KINDS:
            for impl in getattr(pm.hook, _HOOK_OF_KIND[kind]).get_hookimpls():
                stage = f"{_HOOK_OF_KIND[kind]}: "
                info.hooks.append(_HOOK_OF_KIND[kind])
                impl.function(register=_make_register(kind, info.label, pending))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - isolation is the point (sys.exit() included)
        info.errors.append(stage + _format_exc(exc))
        logger.warning("%s", _describe_failure(info))
        return
    info.registrations = list(pending)  # a copy: a callback kept by the plugin cannot add to it later


def _refuse_clashes(plugins: list[PluginInfo]) -> list[Clash]:
    """Take every (kind, name) that several loaded plugins registered away from all of them; each keeps
    the rest of its registrations."""
    claims: dict[tuple[str, str], list[tuple[PluginInfo, Registration]]] = {}
    for info in plugins:
        for reg in info.registrations:
            claims.setdefault((reg.kind, reg.name), []).append((info, reg))
    clashes = []
    for (kind, name), owners in claims.items():
        if len(owners) < 2:
            continue
        claims_of_name = tuple(Claim(i.label, i.distribution, i.version, r.target) for i, r in owners)
        clashes.append(Clash(kind, name, claims_of_name))
        for info, reg in owners:
            info.registrations.remove(reg)
    return clashes


def _make_register(kind: str, plugin: str, sink: list[Registration]) -> Callable[..., None]:
    def register(name: str, target: str, **meta: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
        if not isinstance(target, str) or not _TARGET_RE.match(target):
            raise ValueError(f"{kind} {name!r}: target must be an import path 'package.module:Attribute', got {target!r}")
        if kind == "bridge" and not meta.get("megatron_model"):
            raise ValueError(f"bridge {name!r}: megatron_model='package.module:Class' is required")
        if kind == "recipe" and meta.get("mode") not in {"pretrain", "sft", "peft"}:
            raise ValueError(f"recipe {name!r}: mode must be 'pretrain', 'sft' or 'peft', got {meta.get('mode')!r}")
        meta = {k: v for k, v in meta.items() if v is not None}
        if any(r.kind == kind and r.name == name for r in sink):
            raise ValueError(f"{kind} {name!r} is registered twice by this plugin")
        sink.append(Registration(kind=kind, name=name, target=target, plugin=plugin, metadata=meta))

    return register
