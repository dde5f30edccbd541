"""Plugin discovery for hosts of Megatron-Bridge (installed as ``nemotron3_super.plugins``).

``load_plugins()`` finds every distribution that declares the ``megatron_bridge.plugins`` entry-point
group; ``install_into_host()`` wires what they registered into Megatron-Bridge. Importing this package
imports neither torch nor megatron.
"""

from nemotron3_super.plugins.hookspecs import ENTRY_POINT_GROUP, hookimpl
from nemotron3_super.plugins.manager import PluginInfo, PluginLoadError, PluginSet, Registration, load_plugins

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginLoadError",
    "PluginSet",
    "Registration",
    "hookimpl",
    "install_into_host",
    "load_plugins",
]


def install_into_host(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - thin lazy re-export
    """See :func:`nemotron3_super.plugins.host.install_into_host` (imported lazily: it needs the host)."""
    from nemotron3_super.plugins.host import install_into_host as _install

    return _install(*args, **kwargs)
