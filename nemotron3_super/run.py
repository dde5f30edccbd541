"""``python -m nemotron3_super.run SCRIPT [ARGS]``: run one of the host's scripts with this plugin active.

The explicit form of the start-up hook (``nemotron3_super.activation``), for environments where the
installed ``.pth`` does not run (``python -S``, a copied venv) or where you want to say so on the
command line. ``MEGATRON_BRIDGE_PLUGINS`` still chooses which plugins load (``""``: none; the host
fixes are applied all the same). Also ``-m MODULE [ARGS]``, and
under torchrun: ``torchrun --nproc-per-node=N -m nemotron3_super.run SCRIPT [ARGS]``. The script runs
as ``__main__`` with ``sys.argv`` and ``sys.path[0]`` as ``python SCRIPT`` would give it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

USAGE = "usage: python -m nemotron3_super.run SCRIPT [ARGS ...] | -m MODULE [ARGS ...]"


def main(argv: list[str] | None = None) -> None:
    """Install the hook, then run the script or module as ``__main__``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE, file=sys.stderr if not argv or argv[0] == "-m" else sys.stdout)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from nemotron3_super.activation import install

    install(force=True)
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    script = Path(argv[0])
    if not script.is_file():
        raise SystemExit(f"nemotron3_super.run: {script}: no such script file ({USAGE})")
    sys.argv = argv
    sys.path[0] = str(script.resolve().parent)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
