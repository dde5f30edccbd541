"""Start-up hook: the host's own tools find this plugin and the host fixes without being edited.

``pip install`` puts ``nemotron3_super.pth`` into site-packages (``nemotron3_super/_build.py``); Python
runs its one line at every interpreter start, in every process, spawned helpers included. Unless
``MEGATRON_BRIDGE_PLUGINS=""`` (the off switch), that line puts a trigger on ``sys.meta_path`` which, when
the process first imports ``megatron``, imports this module and calls :func:`install`. Importing this module imports the package, which registers the host fixes
(``host_compat``: hooks only, no torch or megatron); :func:`install` adds one more hook: once a process
imports ``megatron.bridge``, ``install_into_host(load_plugins())`` runs, so AutoBridge dispatches to our
bridge and the host's recipe lookup finds ours. A process that never imports megatron pays for the
trigger only (``benchmarks/startup_hook.py``).

An action that fails is logged and the host's import goes on (``MEGATRON_BRIDGE_PLUGINS_STRICT=1``: it
raises).
"""

from __future__ import annotations

import os

from nemotron3_super.host_compat import hooks

if False:  # for type checkers only (typing.TYPE_CHECKING): collections.abc is not loaded at start-up
    from collections.abc import Callable

ENV_PLUGINS = "MEGATRON_BRIDGE_PLUGINS"
ENV_STRICT = "MEGATRON_BRIDGE_PLUGINS_STRICT"
_REGISTERED: list[tuple[str, object]] = []  # (module, hook) this module registered, for uninstall()


def _safe(action: Callable[[], None], module: str) -> Callable[[object], None]:
    """``action`` as a post-import hook that never breaks the host's import (unless strict)."""
    def hook(_module: object) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the host's own import must go on
            if os.environ.get(ENV_STRICT, "") not in ("", "0"):
                raise
            import logging

            logging.getLogger(__name__).warning("nemotron3_super start-up hook %s (after %s) failed: %s: %s",
                                                getattr(action, "__name__", action), module,
                                                type(exc).__name__, exc)
    return hook


def on_import(module: str, action: Callable[[], None]) -> None:
    """Run ``action`` once ``module`` has been imported (now, if it already is), failures contained."""
    hook = _safe(action, module)
    _REGISTERED.append((module, hook))
    hooks.after_import(module, hook)


def _host_ready() -> None:
    """After ``import megatron.bridge``: our bridges, recipes and module prefixes into the host."""
    from nemotron3_super.plugins import install_into_host, load_plugins

    install_into_host(load_plugins())


def enabled() -> bool:
    """False when ``MEGATRON_BRIDGE_PLUGINS`` is set to "" (load no plugin: the off switch)."""
    value = os.environ.get(ENV_PLUGINS)
    return value is None or value.strip() != ""


def installed() -> bool:
    return any(module == "megatron.bridge" for module, _ in _REGISTERED)


def install(*, force: bool = False) -> bool:
    """Register the plugin installation (once; ``force`` ignores the off switch). Returns whether it is."""
    if not (force or enabled()):
        return False
    if not installed():
        on_import("megatron.bridge", _host_ready)
    return True


def uninstall() -> None:
    """Forget what :func:`install` / :func:`on_import` registered (tests that install explicitly)."""
    while _REGISTERED:
        module, hook = _REGISTERED.pop()
        hooks.forget(module, hook)
