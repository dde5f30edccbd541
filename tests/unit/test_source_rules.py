"""House rules that are about the source itself: file and function sizes, and what a light module imports.

A function over 60 lines must say why in a comment starting ``# long:`` on one of its first lines (the
``def`` line, or the lines of its docstring or body up to the tenth)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("nemotron3_super", "plugins", "recipes", "tests", "benchmarks")
MAX_FILE_LINES = 400  # outside benchmarks/
MAX_FUNCTION_LINES = 60


VENDORED = ROOT / "tests" / "peer" / "vendor"  # the host's own files, kept verbatim with their license


def python_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if VENDORED not in p.parents)


def long_functions(path: Path) -> list[str]:
    """``file:line name (N lines)`` for each function over the limit without a ``# long:`` comment."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for node in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            head = lines[node.lineno - 1:node.lineno + 9]
            if length > MAX_FUNCTION_LINES and not any("# long:" in line for line in head):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_source_file_over_400_lines_outside_benchmarks() -> None:
    files = [p for p in python_files() if "benchmarks" not in p.relative_to(ROOT).parts]
    assert len(files) > 50
    too_long = {str(p.relative_to(ROOT)): n for p in files
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert not too_long, f"files over {MAX_FILE_LINES} lines: {too_long}"


def test_no_long_function_without_a_reason() -> None:
    found = [f for p in python_files() for f in long_functions(p)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines without a '# long:' comment: {found}"


def test_the_function_check_sees_a_long_function(tmp_path: Path, monkeypatch) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n\n\ndef g():  # long: one table\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert long_functions(tmp_path / "m.py") == [f"m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_peft_writer_imports_no_host() -> None:
    """``convert export-lora`` reads a host-written adapter folder with the PEFT writer alone: importing
    it must not import Megatron-Bridge (34 s of imports before the split)."""
    code = ("import sys, nemotron3_super.conversion.peft_export\n"
            "print(sorted({m.split('.')[0] + '.' + m.split('.')[1] for m in sys.modules"
            " if m.startswith('megatron.')}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_package_is_in_the_distribution() -> None:
    """pyproject.toml lists packages by name: a new package folder missing there works in an editable
    checkout and is absent from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"nemotron3_super": ROOT / "nemotron3_super", "nemotron3_super.plugins": ROOT / "plugins",
               "nemotron3_super.recipes": ROOT / "recipes"}
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" not in parts:
                found.add(".".join([name, *parts]))
    found.add("nemotron3_super.configs")  # package data only (config.json files)
    assert found == listed, (f"in the tree, not in pyproject: {sorted(found - listed)}; "
                             f"listed but absent: {sorted(listed - found)}")


def test_readme_layout_table_names_every_module() -> None:
    """README's "Layout" table is where a newcomer finds a file's concern: every module must be in it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("\n## Layout"):]
    table = table[:table.find("\n## ", 1)] if "\n## " in table[1:] else table
    modules = [p for d in ("nemotron3_super", "plugins", "recipes") for p in sorted((ROOT / d).rglob("*.py"))
               if p.name != "__init__.py"]
    assert len(modules) > 40
    unnamed = [str(p.relative_to(ROOT)) for p in modules if f"{p.name}`" not in table]
    assert not unnamed, f"README.md's Layout table does not name: {unnamed}"
