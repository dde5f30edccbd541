"""Wires plugin registrations into Megatron-Bridge without changing the host.

- bridges go into the host's dispatch (``megatron.bridge.models.conversion.model_bridge``);
- recipes become attributes of ``megatron.bridge.recipes``, where the host's ``run_recipe.py`` looks
  them up by name;
- every registered target's top-level package joins the host's ``_target_`` allow-list, so a run
  config saved with our provider reloads from a checkpoint.

Override policy. The host registers its own bridge for ``NemotronHForCausalLM`` by import side effect,
and its dispatch silently keeps the last registration. Here the choice is explicit
(``bridge_policy`` argument, else ``MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY``):
``plugin`` (default) replaces the host's bridge and logs the replacement; ``host`` keeps the host's
bridge where it has one; ``error`` refuses any overlap.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from nemotron3_super.plugins.manager import PluginSet, Registration, import_target, load_plugins
from nemotron3_super.ranks import reports_here

logger = logging.getLogger(__name__)

ENV_BRIDGE_POLICY = "MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY"
BRIDGE_POLICIES = ("plugin", "host", "error")


class BridgeConflictError(RuntimeError):
    """Raised under the ``error`` policy when a plugin bridge overlaps one the host already has."""


@dataclass
class InstallReport:
    """What :func:`install_into_host` did, for logs and tests."""

    bridge_policy: str
    bridges: dict[str, str] = field(default_factory=dict)  # architecture -> bridge class in effect
    replaced: dict[str, str] = field(default_factory=dict)  # architecture -> host bridge it replaced
    kept_host: dict[str, str] = field(default_factory=dict)  # architecture -> host bridge kept
    recipes: list[str] = field(default_factory=list)
    allowed_prefixes: list[str] = field(default_factory=list)

    def bridge_notes(self) -> dict[str, str]:
        """architecture -> one phrase on where its bridge comes from (``env`` rows, the dry-run plan)."""
        notes = {}
        for arch in sorted(self.bridges):
            if arch in self.replaced:
                notes[arch] = f"replaces the host's {self.replaced[arch]}"
            elif arch in self.kept_host:
                notes[arch] = "the host's own (policy 'host' keeps it)"
            else:
                notes[arch] = "the host has no bridge of its own for it"
        return notes


_INSTALLED: dict[tuple[int, str], InstallReport] = {}
# architecture -> the host's own bridge that a plugin bridge replaced in this process. The dispatch forgets
# it once replaced, and a later install (another plugin set, `nemotron3-super env`) must still report it.
_HOST_BRIDGE_REPLACED: dict[str, str] = {}
_REPORTED_BY_CALLER: list[bool] = []  # non-empty: the running command prints the bridge decision itself


@contextlib.contextmanager
def replacements_reported_by_caller() -> Iterator[None]:
    """Within this block a replaced host bridge is logged at INFO, not WARNING: for commands whose own output
    states the decision (the dry-run plan), so it is not said twice, once before the plan."""
    _REPORTED_BY_CALLER.append(True)
    try:
        yield
    finally:
        _REPORTED_BY_CALLER.pop()


def resolve_bridge_policy(policy: str | None = None) -> str:
    value = (policy or os.environ.get(ENV_BRIDGE_POLICY) or "plugin").strip().lower()
    if value not in BRIDGE_POLICIES:
        raise ValueError(
            f"bridge policy {value!r} (from {'argument' if policy else ENV_BRIDGE_POLICY}) is not one of "
            f"{', '.join(BRIDGE_POLICIES)}"
        )
    return value


def install_into_host(
    plugin_set: PluginSet | None = None, *, bridge_policy: str | None = None, recipes: bool = True
) -> InstallReport:
    """Register every discovered bridge, recipe and module prefix with the (imported) host.

    Idempotent per plugin set and policy: safe to call in every torchrun rank and more than once.
    """
    plugin_set = plugin_set or load_plugins()
    policy = resolve_bridge_policy(bridge_policy)
    key = (plugin_set.serial, policy)  # not id(): ids are reused after garbage collection
    if key in _INSTALLED:
        return _INSTALLED[key]

    report = InstallReport(bridge_policy=policy)
    for reg in plugin_set.of_kind("bridge"):
        _install_bridge(reg, policy, report)
    if recipes and plugin_set.of_kind("recipe"):
        _install_recipes(plugin_set.of_kind("recipe"), report)
    _allow_prefixes(plugin_set, report)
    _INSTALLED[key] = report
    return report


def host_bridge_for(architecture: str) -> type | None:
    """The bridge class the host's dispatch returns for an HF architecture name, or None."""
    from megatron.bridge.models.conversion import model_bridge

    try:
        return type(model_bridge.get_model_bridge(architecture))
    except NotImplementedError:
        return None


def _install_bridge(reg: Registration, policy: str, report: InstallReport) -> None:
    from megatron.bridge.models.conversion import model_bridge

    import megatron.bridge.models  # noqa: F401 - the host's own bridges register on import

    architecture = reg.name
    ours = reg.target.replace(":", ".")
    existing = host_bridge_for(architecture)
    if existing is not None and _qualname(existing) == ours:  # installed before (same or another plugin set)
        report.bridges[architecture] = ours
        if architecture in _HOST_BRIDGE_REPLACED:
            report.replaced[architecture] = _HOST_BRIDGE_REPLACED[architecture]
        return
    if existing is not None:
        if policy == "error":
            raise BridgeConflictError(
                f"plugin {reg.plugin!r} registers bridge {ours} for {architecture}, which the host "
                f"already serves with {_qualname(existing)}; set {ENV_BRIDGE_POLICY}=plugin or =host to choose"
            )
        if policy == "host":
            logger.info("keeping host bridge %s for %s (policy 'host'); plugin %r's %s not installed",
                        _qualname(existing), architecture, reg.plugin, ours)
            report.kept_host[architecture] = _qualname(existing)
            report.bridges[architecture] = _qualname(existing)
            return
        # said once per job: by torchrun's rank 0 (every rank installs), unless the caller states it itself
        loud = not _REPORTED_BY_CALLER and reports_here()
        logger.log(logging.WARNING if loud else logging.INFO,
                   "plugin %r replaces host bridge %s with %s for %s (policy 'plugin')",
                   reg.plugin, _qualname(existing), ours, architecture)
        report.replaced[architecture] = _qualname(existing)
        _HOST_BRIDGE_REPLACED.setdefault(architecture, _qualname(existing))
    megatron_model = import_target(reg.metadata["megatron_model"], context=f"plugin {reg.plugin!r}: bridge {architecture!r}")
    deferred = _deferred_bridge(reg, model_bridge.MegatronModelBridge)
    for source in _dispatch_keys(architecture):
        model_bridge.create_bridge_decorator(
            source=source, target=megatron_model, model_type=reg.metadata.get("model_type"))(deferred)
    report.bridges[architecture] = ours


def _deferred_bridge(reg: Registration, base: type) -> type:
    """What the host's dispatch holds for a plugin bridge: a class whose first instantiation imports the
    real bridge (and its provider) and returns an instance of it. Installing into the host thus imports
    none of the plugin's model code (the provider module alone costs ~45 ms of dataclass creation)."""
    context = f"plugin {reg.plugin!r}: bridge {reg.name!r}"
    meta = reg.metadata

    class DeferredBridge:
        resolved: type | None = None

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            if cls.resolved is None:
                real = import_target(reg.target, context=context)
                if not (isinstance(real, type) and issubclass(real, base)):
                    raise TypeError(f"{context}: {reg.target} is not a MegatronModelBridge subclass")
                # what the host's @register_bridge decorator would have set on the class
                real.SOURCE_NAME = reg.name
                if meta.get("model_type"):
                    real.MODEL_TYPE = meta["model_type"]
                if meta.get("provider"):
                    real.PROVIDER_CLASS = import_target(meta["provider"], context=context)
                cls.resolved = real
            return cls.resolved(*args, **kwargs)

    DeferredBridge.__qualname__ = DeferredBridge.__name__ = f"Deferred{reg.target.rpartition(':')[2]}"
    return DeferredBridge


def _dispatch_keys(architecture: str) -> list[Any]:
    """Every key under which the host's dispatch could answer for ``architecture``.

    The host may have registered a class rather than the name; registering under each matching key
    (and the name) guarantees the lookup cannot fall through to the host's entry.
    """
    from megatron.bridge.models.conversion import model_bridge

    keys: list[Any] = [architecture]
    for key in list(model_bridge.get_model_bridge._exact_types):
        name = key if isinstance(key, str) else getattr(key, "__name__", None)
        if name == architecture and key not in keys:
            keys.append(key)
    return keys


def _install_recipes(regs: list[Registration], report: InstallReport) -> None:
    import megatron.bridge.recipes as host_recipes

    for reg in regs:
        current = getattr(host_recipes, reg.name, None)
        if current is not None and getattr(current, "plugin_target", None) != reg.target:
            raise RuntimeError(
                f"plugin {reg.plugin!r}: recipe name {reg.name!r} is already taken in megatron.bridge.recipes "
                f"by {_qualname(current)}"
            )
        setattr(host_recipes, reg.name, _deferred_recipe(reg))
        report.recipes.append(reg.name)


def _deferred_recipe(reg: Registration) -> Callable[..., Any]:
    """The host finds recipes by name in ``megatron.bridge.recipes``; what it finds imports the plugin's
    factory on the first call (recipe modules import the whole model stack)."""

    def recipe(*args: Any, **kwargs: Any) -> Any:
        return reg.load()(*args, **kwargs)

    recipe.__name__ = recipe.__qualname__ = reg.name
    recipe.__module__ = reg.module
    recipe.__doc__ = f"{reg.metadata.get('description', '')} (from plugin {reg.plugin!r}: {reg.target})".strip()
    recipe.plugin_target = reg.target  # type: ignore[attr-defined]
    return recipe


def _allow_prefixes(plugin_set: PluginSet, report: InstallReport) -> None:
    """Allow ``_target_`` reloads from each plugin's own top-level package, and nothing wider.

    A registration pointing outside its plugin's package (``torch``, ``os``, ...) does not widen the
    host's allow-list: that list is what keeps a checkpoint's YAML from instantiating arbitrary code.
    """
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix

    prefixes = set()
    for info in plugin_set.plugins:
        package = info.module.split(".")[0]
        if any(reg.module == package or reg.module.startswith(package + ".") for reg in info.registrations):
            prefixes.add(package)
    for prefix in sorted(prefixes):
        register_allowed_target_prefix(prefix)
        report.allowed_prefixes.append(prefix)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
