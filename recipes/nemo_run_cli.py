"""NeMo-Run discovery: the ``nemo_run.cli`` entry point of this distribution loads this module.

NeMo-Run imports every module of that group and keeps the factories they register. Each recipe of
:data:`nemotron3_super.recipes.RECIPES` becomes a factory in the ``nemotron3_super`` namespace that
returns a ``run.Partial`` of :func:`nemotron3_super.launch.run_recipe`; the ConfigContainer is built
inside the job (offline, validated), so the Partial stays small and serialisable:

    import nemo_run as run
    task = run.cli.resolve_factory("nemotron3_super", "nemotron3_super_pretrain_config")()
    task.overrides = ["model.hybrid_override_pattern=MEME*ME", "model.num_layers=7"]
    run.run(task, executor=run.LocalExecutor(ntasks_per_node=8, launcher="torchrun"))
"""

# No `from __future__ import annotations`: NeMo-Run evaluates the factories' return annotations.
from typing import Callable

import nemo_run as run

from nemotron3_super.launch import run_recipe
from nemotron3_super.recipes import RECIPES

NAMESPACE = "nemotron3_super"


def _factory(name: str, description: str) -> Callable[[], run.Partial]:
    def factory() -> run.Partial[run_recipe]:
        return run.Partial(run_recipe, name=name, overrides=[])

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = description
    return factory


FACTORIES = {name: run.cli.factory(_factory(name, info.description), name=name, namespace=NAMESPACE)
             for name, info in RECIPES.items()}
