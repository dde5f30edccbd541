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
# One line (site runs lines that start with "import"). The off switch MEGATRON_BRIDGE_PLUGINS="" is read
# here, so with it not even this package is imported; the work is in nemotron3_super.activation (stdlib only).
PTH_LINE = ("import os; os.environ.get('MEGATRON_BRIDGE_PLUGINS', 'all').strip() and "
            "__import__('nemotron3_super.activation').activation.install()\n")


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
