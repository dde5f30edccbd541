"""Tiny plugin distributions built and pip-installed for real, for the entry-point tests.

A fresh virtual environment holds this library (built as a wheel, installed without dependencies), the
distributions a test makes with :func:`make_plugin_dist`, and pluggy (made importable through a .pth file,
so no network is needed). Nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import venv
from pathlib import Path

import pluggy

REPO = Path(__file__).resolve().parents[2]
GROUP = "megatron_bridge.plugins"
#: what every plugin module made here starts with, so that its body can declare hooks with ``@hookimpl``
HEADER = 'import pluggy\nhookimpl = pluggy.HookimplMarker("megatron_bridge_plugins")\n'


def make_plugin_dist(root: Path, dist: str, module: str, body: str, *, entry_point: str | None = None) -> Path:
    """A source tree for distribution ``dist`` (version ``9.9.<len(dist)>``) whose package ``module`` has
    :data:`HEADER` + ``body`` as its ``__init__.py`` and is declared as entry point ``entry_point`` (default:
    ``module``)."""
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(HEADER + textwrap.dedent(body))
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "9.9.{len(dist)}"
        [project.entry-points."{GROUP}"]
        {entry_point or module} = "{module}"
        [tool.setuptools]
        packages = ["{module}"]
    """))
    return src


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # cwd outside the checkout: `python -c` would otherwise import the source tree, not the install
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tempfile.gettempdir())
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def install_env(tmp: Path, sources: list[Path]) -> dict[str, Path]:
    """A fresh venv under ``tmp`` with this library and ``sources`` installed as wheels; its python and CLI."""
    wheels = tmp / "wheels"
    for src in (REPO, *sources):
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
             str(src)])
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = tmp / "deps"  # pluggy alone, importable through a .pth (its metadata stays out of the scan)
    deps.mkdir()
    (deps / "pluggy").symlink_to(Path(pluggy.__file__).parent)
    (site / "zz_test_deps.pth").write_text(str(deps) + "\n")
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", *map(str, sorted(wheels.glob("*.whl")))])
    return {"python": py, "cli": env_dir / "bin" / "nemotron3-super"}


def cli(plugin_env: dict[str, Path], *args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    """``nemotron3-super ARGS`` in the venv, with no MEGATRON_BRIDGE_PLUGINS* variable but ``env_overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEGATRON_BRIDGE_PLUGINS")}
    env.update(env_overrides)
    return run([str(plugin_env["cli"]), *args], env=env, check=False)
