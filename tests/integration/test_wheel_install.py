"""Packaging as users install it: README's "Installing into an environment that already has torch" block, run
line by line in a fresh virtual environment, then ``plugins``, ``recipes`` and ``demo`` from outside the
repository; the sdist carries the tests and the LICENSE.

Offline and fast enough for CI: the fresh environment sees the packages of the environment running this test
(torch, megatron-core, megatron-bridge, ...) through a ``.pth`` file pointing at a folder of links to them,
minus this library (so the wheel is what gets installed, non-editable) and minus mamba-ssm / causal-conv1d
until README's mamba step (their sdists would come from the network; linking the already-built packages in is
that step's stand-in). pip runs with ``PIP_NO_INDEX=1`` (everything it needs is already there) and without
build isolation (which would download setuptools). Everything else is README's commands as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from nemotron3_super.conversion.demo import DEMO_TMP_PREFIX

REPO = Path(__file__).resolve().parents[2]
SECTION = "### Installing into an environment that already has torch"
LATE = ("mamba_ssm", "causal_conv1d")  # linked in at README's mamba step
NOT_LINKED = ("nemotron3_super", "__editable__", "_nemotron3_super") + LATE
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", ".whl", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache")

pytestmark = pytest.mark.slow


def readme_install_lines() -> list[str]:
    """The shell lines of README's install block (continuations joined, comments kept for bash)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    block = re.search(r"```bash\n(.*?)```", text[text.index(SECTION):], re.S)
    assert block, f"README.md: no bash block under {SECTION!r}"
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def _run(cmd: list[str] | str, cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200,
                          shell=isinstance(cmd, str), executable="/bin/bash" if isinstance(cmd, str) else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _link_site_packages(target: Path, names: tuple[str, ...], *, exclude: bool) -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir(exist_ok=True)
    for entry in site.iterdir():
        matched = entry.name.startswith(names)
        if matched != exclude and not entry.name.endswith(".pth"):
            (target / entry.name).symlink_to(entry)


def test_sdist_carries_tests_and_license(tmp_path: Path) -> None:
    src = tmp_path / "nemotron3-super"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path / "sd"), str(src)],
         tmp_path, dict(os.environ))
    (sdist,) = (tmp_path / "sd").glob("nemotron3_super-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "tests/conftest.py",
                   "tests/integration/test_wheel_install.py", "tests/unit/test_plugin_manager.py", "docs/RECIPES.md"):
        assert needed in names, f"{sdist.name} lacks {needed}"
    assert not [n for n in names if "__pycache__" in n or n.startswith(".venv")]


def test_wheel_installed_as_readme_says(tmp_path: Path) -> None:
    lines = readme_install_lines()
    src = tmp_path / "nemotron3-super"  # the clone, as README's `cd nemotron3-super` expects
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    env_dir, deps = tmp_path / "venv", tmp_path / "deps"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    _link_site_packages(deps, NOT_LINKED, exclude=True)
    purelib = _run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   tmp_path, dict(os.environ)).stdout.strip()
    (Path(purelib) / "_test_deps.pth").write_text(str(deps) + "\n")
    user_tmp = tmp_path / "user-tmp"
    user_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(env_dir),
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=str(user_tmp))
    cli = str(env_dir / "bin" / "nemotron3-super")
    mamba = [i for i, line in enumerate(lines) if "mamba-ssm" in line]
    assert len(mamba) == 1 and lines[-1] == lines[mamba[0]], "README's mamba-ssm step should be the last line"
    _run("\n".join(["set -euo pipefail", *lines[:-1]]), tmp_path, env)  # wheel, [recipes], megatron-bridge

    where = _run([str(env_dir / "bin" / "python"), "-c", "import nemotron3_super; print(nemotron3_super.__file__)"],
                 tmp_path, env).stdout.strip()
    assert where.startswith(purelib), f"nemotron3_super imported from {where}, not the installed wheel"
    plugins = json.loads(_run([cli, "plugins", "--json", "--strict"], tmp_path, env).stdout)["plugins"]
    assert [(p["name"], p["distribution"], p["errors"]) for p in plugins] == [("nemotron3_super", "nemotron3-super", [])]
    recipes = {r["name"] for r in json.loads(_run([cli, "recipes", "--json"], tmp_path, env).stdout)}
    assert "nemotron3_super_pretrain_config" in recipes and "nemotron3_super_lora_config" in recipes
    assert "megatron-bridge 0.6.2 requires" in _run("pip check", tmp_path, env, check=False).stdout

    failed = _run([cli, "demo"], tmp_path, env, check=False)  # before the mamba-ssm step
    assert failed.returncode != 0 and "MambaSSM is not installed" in failed.stderr, failed.stderr[-3000:]
    left = [p.name for p in user_tmp.iterdir() if p.name.startswith(DEMO_TMP_PREFIX)]  # torch's caches may stay
    assert left == [], "a failed demo left its temporary folder behind"

    _link_site_packages(deps, LATE, exclude=False)  # stand-in for downloading and building the two sdists
    _run(lines[-1], tmp_path, env)
    done = _run([cli, "demo"], tmp_path, env)
    assert "result: IDENTICAL" in done.stdout and "demo passed" in done.stdout, done.stdout[-3000:]
