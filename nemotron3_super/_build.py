"""Build step (setuptools ``build_py``): ship ``nemotron3_super.pth`` at the top of site-packages.

Python runs a ``.pth`` line that starts with ``import`` at every interpreter start, which is how the
host's own tools get this plugin without being edited (``nemotron3_super.activation``). The same file
goes into wheels and into editable installs (``pip install -e``). Used only by setuptools at build time.
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "nemotron3_super.pth"
# The .pth line (site executes lines that start with "import"). It must cost next to nothing in a process that
# never imports megatron, so it only puts a trigger on sys.meta_path: when ``megatron`` is first imported, the
# trigger removes itself and imports nemotron3_super.activation (the package registers the host fixes as import
# hooks; install() adds the plugin installation). The off switch MEGATRON_BRIDGE_PLUGINS="" is read here.
TRIGGER_SOURCE = """
if os.environ.get("MEGATRON_BRIDGE_PLUGINS", "all").strip() and not any(
        type(f).__name__ == "Nemotron3SuperTrigger" for f in sys.meta_path):  # site-packages seen twice
    class Nemotron3SuperTrigger:
        def find_spec(self, name, path=None, target=None):
            if name == "megatron":
                sys.meta_path.remove(self)
                __import__("nemotron3_super.activation").activation.install()
            return None
    sys.meta_path.insert(0, Nemotron3SuperTrigger())
"""
PTH_LINE = f"import os, sys; exec({TRIGGER_SOURCE!r})\n"


class BuildWithPth(build_py):
    """build_py that also writes the start-up hook next to the package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / PTH_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PTH_LINE, encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH_NAME)]



class _StrategyWithPth:
    """An editable-install strategy that also writes the start-up hook into the editable wheel."""

    def __init__(self, inner) -> None:  # noqa: ANN001 - setuptools' private strategy protocol
        self.inner = inner

    def __call__(self, wheel, files, mapping) -> None:  # noqa: ANN001
        self.inner(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_LINE)

    def __enter__(self) -> "_StrategyWithPth":
        self.inner.__enter__()
        return self

    def __exit__(self, *exc) -> object:  # noqa: ANN002
        return self.inner.__exit__(*exc)


class EditableWithPth(editable_wheel):
    """``pip install -e`` gets the start-up hook too (setuptools >= 64 editable wheels; the strategy
    hook is setuptools-internal: without it the editable install simply lacks the .pth)."""

    def _select_strategy(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))
