"""``nemotron3-super`` command line.

Sub-commands import only what they need: ``plugins`` and ``recipes`` never import torch or megatron.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _plugin_set(args: argparse.Namespace):  # noqa: ANN202
    from nemotron3_super.plugins.manager import load_plugins

    return load_plugins(strict=True if args.strict else None)


def cmd_plugins(args: argparse.Namespace) -> int:
    """List discovered plugins, what each registered, and load errors."""
    plugin_set = _plugin_set(args)
    if args.json:
        print(json.dumps({"plugins": [p.as_dict() for p in plugin_set.plugins], "skipped": plugin_set.skipped},
                         indent=2))
    else:
        rows = [("plugin", "distribution", "version", "registered / error")]
        for p in plugin_set.plugins:
            what = "; ".join(p.errors) if p.errors else ", ".join(f"{r.kind}:{r.name}" for r in p.registrations)
            rows.append((p.name, p.distribution or "?", p.version or "?", ("ERROR " if p.errors else "") + (what or "-")))
        _print_table(rows)
        if plugin_set.skipped:
            print(f"skipped by MEGATRON_BRIDGE_PLUGINS: {', '.join(plugin_set.skipped)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List recipe factories registered by plugins."""
    plugin_set = _plugin_set(args)
    regs = plugin_set.of_kind("recipe")
    if args.json:
        print(json.dumps([{"plugin": r.plugin, **r.as_dict()} for r in regs], indent=2))
    else:
        rows = [("recipe", "mode", "plugin", "target")]
        rows += [(r.name, str(r.metadata.get("mode", "")), r.plugin, r.target) for r in regs]
        _print_table(rows)
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemotron3-super", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("plugins", cmd_plugins, "list Megatron-Bridge plugins found through entry points"),
        ("recipes", cmd_recipes, "list recipe factories registered by plugins"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--strict", action="store_true", help="fail on the first plugin that does not load")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI prints one clear line, not a traceback
        print(f"nemotron3-super {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
