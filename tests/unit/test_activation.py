"""The start-up hook (nemotron3_super.pth -> nemotron3_super.activation) and ``python -m nemotron3_super.run``,
in fresh interpreters, without importing torch or megatron."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nemotron3_super.activation import ENV_PLUGINS

PROBE = """
import sys
trigger = any(type(f).__name__ == "Nemotron3SuperTrigger" for f in sys.meta_path)
print(trigger, "torch" in sys.modules, "megatron" in sys.modules, "nemotron3_super" in sys.modules)
"""
AFTER_MEGATRON = """
import sys
import megatron  # the namespace package: what every megatron.core / megatron.bridge import starts with
import nemotron3_super.activation as a
import nemotron3_super.host_compat as hc
print(a.installed(), hc._applied, any(type(f).__name__ == "Nemotron3SuperTrigger" for f in sys.meta_path))
"""


def _python(args: list[str], cwd: Path | None = None, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != ENV_PLUGINS}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**base, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_pth_file_is_installed_next_to_the_package() -> None:
    pth = Path(sysconfig.get_paths()["purelib"]) / "nemotron3_super.pth"
    from nemotron3_super._build import PTH_LINE

    assert pth.read_text() == PTH_LINE


def test_every_interpreter_gets_the_trigger_and_nothing_else() -> None:
    assert _python(["-c", PROBE]) == "True False False False"


def test_importing_megatron_installs_the_fixes_and_the_plugin() -> None:
    assert _python(["-c", AFTER_MEGATRON]) == "True True False"


def test_empty_plugin_list_is_the_off_switch() -> None:
    assert _python(["-c", PROBE], **{ENV_PLUGINS: ""}) == "False False False False"
    assert _python(["-c", AFTER_MEGATRON.replace("import nemotron3_super.activation as a", "a = None")
                    .replace("import nemotron3_super.host_compat as hc\n", "")
                    .replace("print(a.installed(), hc._applied, ", "print('nemotron3_super' in sys.modules, ")],
                   **{ENV_PLUGINS: ""}) == "False False"


def test_spawned_helper_processes_get_it_too(tmp_path: Path) -> None:
    script = tmp_path / "spawner.py"
    script.write_text("import multiprocessing as mp, sys\n"
                      "def probe(q):\n"
                      "    q.put(any(type(f).__name__ == 'Nemotron3SuperTrigger' for f in sys.meta_path))\n"
                      "if __name__ == '__main__':\n"
                      "    ctx = mp.get_context('spawn'); q = ctx.Queue()\n"
                      "    p = ctx.Process(target=probe, args=(q,)); p.start(); print(q.get(timeout=60)); p.join()\n")
    assert _python([str(script)]) == "True"


def test_run_executes_a_script_as_main_with_its_arguments(tmp_path: Path) -> None:
    script = tmp_path / "tool.py"
    script.write_text("import sys\nimport nemotron3_super.activation as a\nprint(a.installed())\n"
                      "print(__name__, sys.argv[1:], sys.path[0])\n")
    out = _python(["-m", "nemotron3_super.run", str(script), "a", "--b=1"], cwd=tmp_path, **{ENV_PLUGINS: ""})
    assert out.splitlines() == ["True", f"__main__ ['a', '--b=1'] {tmp_path}"]  # installed despite the switch


def test_run_executes_a_module(tmp_path: Path) -> None:
    (tmp_path / "tool_mod.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    out = _python(["-m", "nemotron3_super.run", "-m", "tool_mod", "x"], cwd=tmp_path,
                  PYTHONPATH=str(tmp_path))
    assert out == "__main__ ['x']"


def test_run_names_a_missing_script(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "nemotron3_super.run", str(tmp_path / "nope.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "nope.py: no such script file" in proc.stderr


def test_on_import_runs_after_the_module_executes(tmp_path: Path) -> None:
    (tmp_path / "late_mod.py").write_text("VALUE = 1\n")
    code = ("import nemotron3_super.activation as a\nseen = []\n"
            "a.on_import('late_mod', lambda: seen.append(__import__('late_mod').VALUE))\n"
            "print(seen)\nimport late_mod\nprint(seen)\n")
    assert _python(["-c", code], PYTHONPATH=str(tmp_path)).splitlines() == ["[]", "[1]"]


@pytest.mark.parametrize("strict", ["", "1"])
def test_a_failing_hook_never_breaks_the_import_unless_strict(tmp_path: Path, strict: str) -> None:
    (tmp_path / "late_mod.py").write_text("VALUE = 1\n")
    code = ("import nemotron3_super.activation as a\n"
            "def boom():\n    raise RuntimeError('boom')\n"
            "a.on_import('late_mod', boom)\nimport late_mod\nprint(late_mod.VALUE)\n")
    base = {k: v for k, v in os.environ.items() if k != ENV_PLUGINS}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**base, "PYTHONPATH": str(tmp_path), "MEGATRON_BRIDGE_PLUGINS_STRICT": strict})
    if strict:
        assert proc.returncode != 0 and "RuntimeError: boom" in proc.stderr
    else:
        assert proc.stdout.strip() == "1" and "hook boom (after late_mod) failed: RuntimeError: boom" in proc.stderr
