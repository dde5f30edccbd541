"""Start-up hook: the host's own tools find this plugin and the host fixes without being edited.

``pip install`` puts ``nemotron3_super.pth`` into site-packages (``nemotron3_super/_build.py``); Python
runs its one line at every interpreter start, in every process, spawned helpers included. That line
calls :func:`install`, which only adds a meta-path finder (standard library only; measured by
``benchmarks/startup_hook.py``). Nothing else happens until a process imports megatron:

- before ``megatron.core`` / ``megatron.bridge`` execute: the import guards that must precede them
  (Mamba stand-in, TE-free LoRA layers; ``host_compat``);
- once ``megatron.bridge`` has been imported: the host fixes (``host_compat``, ``host_cpu``) and
  ``install_into_host(load_plugins())``, so AutoBridge dispatches to our bridge and our recipes are
  found by name;
- other fixes can ask to run when their host module is first imported (:func:`when_imported`).

Off switch: ``MEGATRON_BRIDGE_PLUGINS=""`` (the plugin manager's "load none") installs nothing. A hook
that fails is logged and the host's import goes on (``MEGATRON_BRIDGE_PLUGINS_STRICT=1``: it raises).
"""

from __future__ import annotations

import os
import sys

if False:  # for type checkers only (typing.TYPE_CHECKING): collections.abc is not loaded at start-up
    from collections.abc import Callable

ENV_PLUGINS = "MEGATRON_BRIDGE_PLUGINS"
ENV_STRICT = "MEGATRON_BRIDGE_PLUGINS_STRICT"

_BEFORE: dict[str, list[Callable[[], None]]] = {}  # module -> run before it executes
_AFTER: dict[str, list[Callable[[], None]]] = {}  # module -> run once it has executed


def when_imported(module: str, action: Callable[[], None]) -> None:
    """Run ``action`` once ``module`` has been imported: now if it already is, else right after."""
    if module in sys.modules:
        action()
    else:
        _AFTER.setdefault(module, []).append(action)


def _run(actions: list[Callable[[], None]], where: str) -> None:
    for action in actions:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - never break the host's own import
            if os.environ.get(ENV_STRICT, "") not in ("", "0"):
                raise
            import logging

            logging.getLogger(__name__).warning("nemotron3_super start-up hook %s (%s) failed: %s: %s",
                                                getattr(action, "__name__", action), where,
                                                type(exc).__name__, exc)


class _Loader:
    """Wraps the real loader of a watched module: actions before and after it executes."""

    def __init__(self, inner: object, name: str) -> None:
        self.inner, self.name = inner, name

    def create_module(self, spec: object) -> object:
        return self.inner.create_module(spec)

    def exec_module(self, module: object) -> None:
        _run(_BEFORE.pop(self.name, []), f"before {self.name}")
        self.inner.exec_module(module)
        _run(_AFTER.pop(self.name, []), f"after {self.name}")

    def __getattr__(self, attr: str) -> object:  # get_source, is_package, resource readers, ...
        return getattr(self.inner, attr)


class _Finder:
    """Meta-path finder at the front of ``sys.meta_path``; a dict lookup for every other module."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name not in _BEFORE and name not in _AFTER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)
                return spec
        return None


def _guards_before_megatron() -> None:
    from nemotron3_super.host_compat import ensure_host_importable, ensure_mamba_ssm_importable

    ensure_mamba_ssm_importable()
    ensure_host_importable()


def _host_ready() -> None:
    """After ``import megatron.bridge``: host fixes, then our bridge/recipes into the host."""
    from nemotron3_super.host_cpu import apply_cpu_fixes
    from nemotron3_super.plugins import install_into_host, load_plugins

    apply_cpu_fixes()
    install_into_host(load_plugins())


def enabled() -> bool:
    """False when ``MEGATRON_BRIDGE_PLUGINS`` is set to "" (load no plugin: the off switch)."""
    value = os.environ.get(ENV_PLUGINS)
    return value is None or value.strip() != ""


def installed() -> bool:
    return any(isinstance(f, _Finder) for f in sys.meta_path)


def install(*, force: bool = False) -> bool:
    """Add the finder (once; ``force`` ignores the off switch). Returns whether it is installed."""
    if not (force or enabled()):
        return False
    if not installed():
        for name in ("megatron.core", "megatron.bridge"):
            if name not in sys.modules:
                _BEFORE.setdefault(name, []).append(_guards_before_megatron)
        sys.meta_path.insert(0, _Finder())
        when_imported("megatron.bridge", _host_ready)
    return True


def uninstall() -> None:
    """Remove the finder and pending actions (tests that install into the host explicitly)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
    _BEFORE.clear()
    _AFTER.clear()
