"""Hook specifications for Megatron-Bridge plugins.

Each hook receives a ``register`` callback instead of returning values, so the host (not the plugin)
decides what a duplicate means and records who registered what: a name that two plugins register is
given to neither (reported as a clash), and a plugin whose hook raises keeps none of its registrations.
Targets are given as import paths (``"package.module:Attribute"``), so registering, listing and validating
plugins imports neither torch nor megatron; the host adapter imports a target only when it wires it in.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

#: pluggy project name; also the prefix of the markers below.
PROJECT = "megatron_bridge_plugins"
#: Entry-point group a plugin distribution declares in its pyproject (``[project.entry-points."..."]``).
ENTRY_POINT_GROUP = "megatron_bridge.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ModelProviderRegister(Protocol):
    def __call__(self, name: str, target: str, *, description: str = "", **metadata: object) -> None: ...


class BridgeRegister(Protocol):
    def __call__(
        self,
        architecture: str,
        target: str,
        *,
        megatron_model: str,
        provider: str | None = None,
        model_type: str | None = None,
        description: str = "",
    ) -> None: ...


class RecipeRegister(Protocol):
    def __call__(self, name: str, target: str, *, mode: str, description: str = "") -> None: ...


@hookspec
def register_model_providers(register: ModelProviderRegister) -> None:
    """Register model providers: ``register("nemotron3-super-120b-a12b", "pkg.mod:Provider")``."""


@hookspec
def register_bridges(register: BridgeRegister) -> None:
    """Register HF <-> Megatron bridges: ``register("NemotronHForCausalLM", "pkg.mod:Bridge", megatron_model=...)``.

    ``architecture`` is the HF ``architectures[0]`` name the host dispatches on.
    """


@hookspec
def register_recipes(register: RecipeRegister) -> None:
    """Register recipe factories returning a ConfigContainer: ``register(name, "pkg.mod:fn", mode="pretrain")``."""
