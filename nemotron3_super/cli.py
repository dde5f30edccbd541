"""``nemotron3-super`` command line.

Sub-commands import only what they need: ``plugins`` and ``recipes`` never import torch or megatron;
the conversion commands (``convert``, ``roundtrip``, ``compare``, ``demo``) import them when run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from nemotron3_super.ranks import reports_here
from nemotron3_super.upstream_flags import add_parallel_sizes, add_trust_remote_code, notes


def _plugin_set(args: argparse.Namespace):  # noqa: ANN202
    from nemotron3_super.plugins.manager import load_plugins

    return load_plugins(strict=True if args.strict else None)


def cmd_plugins(args: argparse.Namespace) -> int:
    """List discovered plugins, what each registered, and load errors."""
    plugin_set = _plugin_set(args)
    if args.json:
        print(json.dumps({"plugins": [p.as_dict() for p in plugin_set.plugins], "skipped": plugin_set.skipped,
                          "clashes": [c.as_dict() for c in plugin_set.clashes],
                          "unmatched": plugin_set.unmatched}, indent=2))
    else:
        rows = [("plugin", "distribution", "version", "registered / error")]
        for p in plugin_set.plugins:
            what = "; ".join(p.errors) if p.errors else ", ".join(f"{r.kind}:{r.name}" for r in p.registrations)
            rows.append((p.name, p.distribution or "?", p.version or "?", ("ERROR " if p.errors else "") + (what or "-")))
        _print_table(rows)
        if plugin_set.skipped:
            print(f"skipped by MEGATRON_BRIDGE_PLUGINS: {', '.join(plugin_set.skipped)}")
        for line in [c.message() for c in plugin_set.clashes] + [plugin_set.selection_error or ""]:
            if line:
                print(line)
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


def cmd_env(args: argparse.Namespace) -> int:
    """Versions, GPUs and the decisions derived from them (layer spec, Mamba path, precision, bridges)."""
    import contextlib

    from nemotron3_super import env

    with contextlib.redirect_stdout(sys.stderr):  # the host logs to stdout from import on: keep --json clean
        rows, seconds = env.collect()
    print(json.dumps(env.as_json(rows, seconds), indent=2) if args.json else env.render(rows, seconds))
    return 0


def _host_output(args: argparse.Namespace) -> None:
    """Before a command that imports the host (see :func:`nemotron3_super.host_compat.warning_filters.command_output`); ``main``
    restores the logging level afterwards (tests and scripts call it in their own process)."""
    from nemotron3_super.host_compat.warning_filters import command_output

    command_output(verbose=args.verbose)


def cmd_convert(args: argparse.Namespace) -> int:
    """HF folder <-> Megatron torch_dist checkpoint (single process, CPU is enough)."""
    _host_output(args)
    from nemotron3_super.conversion import commands

    if args.direction == "import":
        from nemotron3_super.conversion.hf_io import MODEL_DTYPES

        report = commands.import_checkpoint(args.hf_model, args.megatron_path, overwrite=args.overwrite,
                                            spec_impl=args.spec, tp=args.tp, ep=args.ep,
                                            device=args.device, pp=args.pp, quiet=args.quiet,
                                            dtype=MODEL_DTYPES[args.dtype] if args.dtype else None)
    else:
        report = commands.export_checkpoint(args.hf_model, args.megatron_path, args.hf_path,
                                            overwrite=args.overwrite, tp=args.tp, ep=args.ep,
                                            device=args.device, pp=args.pp, quiet=args.quiet,
                                            copy_remote_code=args.copy_remote_code)
    if reports_here():
        print(report.render(f"convert {args.direction}"))
    return 0


def cmd_export_lora(args: argparse.Namespace) -> int:
    """Host-written LoRA adapter (on-disk names) -> HF PEFT folder that loads on transformers' NemotronH."""
    _host_output(args)
    from nemotron3_super.conversion.hf_io import HFCheckpoint
    from nemotron3_super.conversion.peft_export import host_adapter_deltas, write_peft_adapter

    report = write_peft_adapter(host_adapter_deltas(args.host_adapter), HFCheckpoint(args.hf_model).arch,
                                args.adapter_path, base_model_name_or_path=args.hf_model, hf_base=args.hf_model,
                                merged_base=args.merged_base)
    print(report.render())
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    """HF -> Megatron -> HF, then every tensor compared bit-exactly; exit 1 on any difference."""
    _host_output(args)
    from nemotron3_super.conversion.commands import roundtrip

    from nemotron3_super.upstream_flags import launched_sizes

    report, steps = roundtrip(args.hf_model, args.megatron_load_path, **launched_sizes(args))
    if reports_here():  # torchrun: rank 0 reports
        for step in steps:
            print(step.render("step"))
        print(report.render())
    return 0 if report.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    """Forward-pass comparison HF vs Megatron (needs a GPU)."""
    _host_output(args)
    from nemotron3_super.conversion.compare import compare

    report = compare(args.hf_model_path, args.megatron_model_path, args.prompt, args.dtype)
    print(report.render())
    return 0 if report.rel_l2 <= args.max_rel_l2 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Tiny Super: build with transformers, import, export, audit (and compare on a GPU)."""
    _host_output(args)
    from nemotron3_super.conversion.demo import run_demo

    return run_demo(args.work_dir)


def _add_conversion_commands(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="convert between an HF folder and a Megatron checkpoint")
    conv_sub = convert.add_subparsers(dest="direction", required=True)
    imp = conv_sub.add_parser("import", help="HF folder -> Megatron torch_dist checkpoint")
    exp = conv_sub.add_parser("export", help="Megatron checkpoint -> HF folder")
    for p in (imp, exp):
        p.add_argument("--hf-model", required=True, help="HF folder (export: config and reference dtypes)")
        p.add_argument("--megatron-path", required=True, help="Megatron checkpoint folder")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an output folder that nemotron3-super wrote earlier (never the working "
                            "directory, an input, or a folder without its marker file)")
        p.add_argument("--quiet", action="store_true", help="no progress on stderr (only the final report)")
        p.add_argument("--tp", type=int, default=1, help="tensor parallel size (>1: run under torchrun)")
        p.add_argument("--ep", type=int, default=1, help="expert parallel size (>1: run under torchrun)")
        p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (>1: run under torchrun)")
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                       help="where the Megatron model lives: cpu (default, any machine) or cuda (one GPU per "
                            "rank, NCCL; needs the model shard to fit in GPU memory)")
        add_trust_remote_code(p)
        p.set_defaults(func=cmd_convert)
    imp.add_argument("--spec", default="local", choices=("local", "te", "auto"),
                     help="layer spec of the Megatron model (parameter names differ)")
    imp.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                     help="dtype of the Megatron weights (default: config.json's); FP8/NVFP4 checkpoints are "
                          "dequantized in float32, then cast to it once")
    exp.add_argument("--hf-path", required=True, help="output HF folder")
    exp.add_argument("--copy-remote-code", action="store_true",
                     help="also copy the reference folder's *.py files and auto_map entries (code that "
                          "transformers runs under trust_remote_code); left out by default")
    lora = conv_sub.add_parser("export-lora", help="Megatron LoRA adapter (as the host writes it) -> HF PEFT "
                               "folder; Mamba out_proj / MTP adapters are refused unless --merged-base")
    lora.add_argument("--hf-model", required=True, help="HF base folder (config; weights for --merged-base)")
    lora.add_argument("--host-adapter", required=True,
                      help="folder written by Megatron-Bridge AutoBridge.save_hf_adapter (backbone.* names)")
    lora.add_argument("--adapter-path", required=True, help="output PEFT folder")
    lora.add_argument("--merged-base", default=None,
                      help="write a copy of --hf-model here with the adapters PEFT cannot take merged in")
    lora.set_defaults(func=cmd_export_lora)
    rt = sub.add_parser("roundtrip", help="HF -> Megatron -> HF and a bit-exact audit of every tensor")
    rt.add_argument("--hf-model", "--hf-model-id", dest="hf_model", required=True)
    rt.add_argument("--megatron-load-path", default=None, help="export this checkpoint instead of importing")
    add_parallel_sizes(rt)
    add_trust_remote_code(rt)
    rt.set_defaults(func=cmd_roundtrip)
    cmp_ = sub.add_parser("compare", help="HF vs Megatron forward pass (needs a CUDA GPU)")
    cmp_.add_argument("--hf-model-path", "--hf_model_path", dest="hf_model_path", required=True)
    cmp_.add_argument("--megatron-model-path", "--megatron_model_path", dest="megatron_model_path", required=True)
    add_parallel_sizes(cmp_)
    add_trust_remote_code(cmp_)
    cmp_.add_argument("--prompt", default="Hello who are ")
    cmp_.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    cmp_.add_argument("--max-rel-l2", type=float, default=1e-4, help="exit 1 above this logits rel-L2")
    cmp_.set_defaults(func=cmd_compare)
    demo = sub.add_parser("demo", help="tiny Super on CPU: build, import, export, bit-exact audit")
    demo.add_argument("--work-dir", default=None, help="where to keep the files (default: a new temp dir)")
    demo.set_defaults(func=cmd_demo)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemotron3-super", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every warning and log line of the host (default: its known TE/Apex fallback "
                             "warnings are one summary line)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("plugins", cmd_plugins, "list Megatron-Bridge plugins found through entry points"),
        ("recipes", cmd_recipes, "list recipe factories registered by plugins"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--strict", action="store_true", help="exit 2 when a plugin fails to load, two plugins register the same name, "
                       "or MEGATRON_BRIDGE_PLUGINS names no installed plugin")
        p.set_defaults(func=func)
    env = sub.add_parser("env", help="versions, GPUs and what will run here (paste it into bug reports)")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(func=cmd_env)
    _add_conversion_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    notes(args)
    logging_disabled = logging.root.manager.disable
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI prints one clear line, not a traceback
        from nemotron3_super.failures import describe

        print(f"nemotron3-super {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        from nemotron3_super.failures import describe, is_checkpoint_exception

        if not is_checkpoint_exception(exc):
            raise  # KeyboardInterrupt, SystemExit
        print(f"nemotron3-super {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2
    finally:
        logging.disable(logging_disabled)  # as the caller had it


if __name__ == "__main__":
    sys.exit(main())
