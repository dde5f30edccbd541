"""Post-import hooks: run a fix on a host module right after it is executed, without importing it.

Why: every fix in this package corrects a module of the host (Megatron-Bridge / megatron-core) that
takes seconds to import. Registering a hook costs nothing; the fix runs when (and only when) the host
imports that module itself, or at once when it is already imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

Fix = Callable[[ModuleType], None]

_AFTER: dict[str, list[Fix]] = {}  # module name -> fixes to run after it is executed
_SOURCE: dict[str, Callable[[str], str]] = {}  # module name -> transform of its source before it runs


class _FixingLoader(importlib.abc.Loader):
    """Wraps the real loader: executes the module (its source transformed, if asked), then the fixes."""

    def __init__(self, loader: Any, origin: str | None, name: str) -> None:
        self._loader, self._origin, self._name = loader, origin, name

    def __getattr__(self, attr: str) -> Any:  # get_source, is_package, ... as the real loader has them
        return getattr(self._loader, attr)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        transform = _SOURCE.get(self._name)
        source = changed = None
        if transform is not None and self._origin:
            with open(self._origin, encoding="utf-8") as fh:
                source = fh.read()
            changed = transform(source)
        if changed is not None and changed != source:
            exec(compile(changed, self._origin, "exec"), module.__dict__)  # noqa: S102
        else:  # nothing to change: the real loader (and its bytecode cache)
            self._loader.exec_module(module)
        for fix in _AFTER.get(self._name, ()):
            fix(module)


class _HookFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``; answers only for hooked names, with the next finder's spec."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in _AFTER and name not in _SOURCE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _FixingLoader):
                    spec.loader = _FixingLoader(spec.loader, spec.origin, name)
                return spec
        return None


def _install_finder() -> None:
    if not any(isinstance(f, _HookFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _HookFinder())


def after_import(name: str, fix: Fix) -> None:
    """Run ``fix(module)`` once module ``name`` is executed (now, if it already is). Idempotent per fix."""
    fixes = _AFTER.setdefault(name, [])
    if fix in fixes:
        return
    fixes.append(fix)
    _install_finder()
    if name in sys.modules:
        fix(sys.modules[name])


def replace_source(name: str, transform: Callable[[str], str]) -> None:
    """Execute module ``name`` from ``transform(its source)`` when it is first imported (no effect on
    a module already imported)."""
    _SOURCE[name] = transform
    _install_finder()


def forget(name: str, fix: Fix) -> None:
    """Undo :func:`after_import` for ``fix`` (if it has not run yet it will not; tests that install
    into the host explicitly use this through ``nemotron3_super.activation.uninstall``)."""
    fixes = _AFTER.get(name, [])
    if fix in fixes:
        fixes.remove(fix)
