"""Discovers Megatron-Bridge plugins through entry points and collects what they register.

Properties a host can rely on:
- isolated: a plugin that fails to import, to register with pluggy, or inside one of its hooks is
  reported (name, distribution, version, error) and the others still load; ``strict`` re-raises;
- switchable: ``MEGATRON_BRIDGE_PLUGINS`` unset loads all, ``""`` loads none, ``"a,b"`` loads only
  those, ``"-a"`` loads all but ``a`` (the escape hatch when one plugin breaks a job);
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
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, Callable

import pluggy

from nemotron3_super.plugins import hookspecs

logger = logging.getLogger(__name__)

ENV_SELECT = "MEGATRON_BRIDGE_PLUGINS"
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


_SERIALS = itertools.count(1)


@dataclass
class PluginSet:
    """What discovery found: every plugin (loaded or not) and the accepted registrations. ``serial``
    identifies this set for caches (unlike ``id()``, it is never reused after garbage collection)."""

    plugins: list[PluginInfo]
    skipped: list[str]
    serial: int = field(default_factory=lambda: next(_SERIALS), compare=False)

    @property
    def registrations(self) -> list[Registration]:
        return [r for p in self.plugins for r in p.registrations]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.errors]

    def of_kind(self, kind: str) -> list[Registration]:
        return [r for r in self.registrations if r.kind == kind]

    def get(self, kind: str, name: str) -> Registration:
        for reg in self.of_kind(kind):
            if reg.name == name:
                return reg
        known = ", ".join(sorted(r.name for r in self.of_kind(kind))) or "none"
        raise KeyError(f"no {kind} named {name!r} is registered by any plugin (registered: {known})")


def parse_selection(value: str | None) -> tuple[set[str] | None, set[str]]:
    """``MEGATRON_BRIDGE_PLUGINS`` -> (allowed names or None for all, denied names)."""
    if value is None:
        return None, set()
    names = [n.strip() for n in value.split(",") if n.strip()]
    denied = {n[1:] for n in names if n.startswith("-")}
    allowed = {n for n in names if not n.startswith("-")}
    if not names:  # set but empty: load none
        return set(), set()
    return (allowed or None), denied


def _strict_from_env() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


_CACHE: dict[tuple[str, str | None], PluginSet] = {}


def load_plugins(
    *, group: str = hookspecs.ENTRY_POINT_GROUP, strict: bool | None = None, refresh: bool = False
) -> PluginSet:
    """Discover plugins of ``group`` and collect their registrations (cached; ``refresh`` rediscovers)."""
    strict = _strict_from_env() if strict is None else strict
    selection = os.environ.get(ENV_SELECT)
    key = (group, selection)
    if not refresh and key in _CACHE:
        result = _CACHE[key]
    else:
        result = _discover(group, selection)
        _CACHE[key] = result
    if strict and result.failed:
        raise PluginLoadError("; ".join(_describe_failure(info) for info in result.failed))
    return result


def _describe_failure(info: PluginInfo) -> str:
    origin = f"{info.distribution} {info.version}" if info.distribution else "unknown distribution"
    return f"plugin {info.name!r} ({origin}, module {info.module}) failed: " + "; ".join(info.errors)


def _discover(group: str, selection: str | None) -> PluginSet:
    allowed, denied = parse_selection(selection)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins: dict[str, PluginInfo] = {}
    skipped: list[str] = []
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        if (allowed is not None and ep.name not in allowed) or ep.name in denied:
            skipped.append(ep.name)
            continue
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            module=ep.value,
        )
        if ep.name in plugins:
            info.errors.append(f"entry point name {ep.name!r} is already used by {plugins[ep.name].distribution}")
            plugins[f"{ep.name}@{info.distribution}"] = info
            continue
        plugins[ep.name] = info
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            pm.check_pending()  # a hookimpl with no matching spec is a plugin bug, not silence
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - isolation is the point (sys.exit() included)
            if pm.get_plugin(ep.name) is not None:
                pm.unregister(name=ep.name)
            info.errors.append(_format_exc(exc))
            logger.warning("%s", _describe_failure(info))
    _collect(pm, plugins)
    return PluginSet(plugins=list(plugins.values()), skipped=skipped)


def _format_exc(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _collect(pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]) -> None:
    """Call each plugin's hooks one plugin at a time, so a failing hook is attributed and contained."""
    seen: dict[tuple[str, str], str] = {}
    for kind in KINDS:
        hook_name = _HOOK_OF_KIND[kind]
        # pluggy returns impls last-registered first; sort by name for a stable order.
        for impl in sorted(getattr(pm.hook, hook_name).get_hookimpls(), key=lambda i: i.plugin_name):
            info = plugins[impl.plugin_name]
            if info.errors:
                continue
            info.hooks.append(hook_name)
            pending: list[Registration] = []
            try:
                impl.function(register=_make_register(kind, info.name, pending))
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a hook's sys.exit() is its failure
                info.errors.append(f"{hook_name}: {_format_exc(exc)}")
                logger.warning("%s", _describe_failure(info))
                continue
            for reg in pending:
                owner = seen.get((kind, reg.name))
                if owner is not None:
                    info.errors.append(f"{kind} {reg.name!r} is already registered by plugin {owner!r}")
                    continue
                seen[(kind, reg.name)] = info.name
                info.registrations.append(reg)
    # A plugin that failed part-way keeps nothing: a half-registered plugin is worse than none.
    for info in plugins.values():
        if info.errors:
            info.registrations.clear()


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
        sink.append(Registration(kind=kind, name=name, target=target, plugin=plugin, metadata=meta))

    return register
