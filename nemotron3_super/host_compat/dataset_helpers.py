"""Training starts from a pip-installed megatron-core.

Megatron-Bridge 0.6 runs ``make`` in megatron-core's datasets folder at every start, but the
megatron-core 0.19 wheel ships the compiled ``helpers_cpp`` and no Makefile, so every pip-installed
launch dies with "no makefile found". When the compiled helpers import, the rebuild is skipped;
otherwise the host's behaviour (and its error) is kept.
"""

from __future__ import annotations

from types import ModuleType

from nemotron3_super.host_compat import hooks

HOST_MODULE = "megatron.bridge.training.initialize"


def use_prebuilt_helpers(initialize: ModuleType) -> None:
    """Wrap ``initialize.compile_helpers`` (once) so it builds only when no prebuilt helpers import."""
    original = initialize.compile_helpers
    if getattr(original, "_nemotron3_super", False):
        return

    def compile_helpers() -> None:
        try:
            import megatron.core.datasets.helpers_cpp  # noqa: F401 - prebuilt in the wheel
        except ImportError:
            original()

    compile_helpers._nemotron3_super = True  # type: ignore[attr-defined]
    initialize.compile_helpers = compile_helpers


def install() -> None:
    """Wrap the helper build when the host's initialize module is imported."""
    hooks.after_import(HOST_MODULE, use_prebuilt_helpers)
