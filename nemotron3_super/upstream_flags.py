"""The upstream Nemotron 3 Super page's command-line flags, accepted as written by our commands.

Megatron-Bridge's example scripts spell some flags differently from this package's CLI
(``--hf-model-id``, ``--hf_model_path``, ``--trust_remote_code``); the commands on that page work here with
only the script swapped for ours (tests/integration/test_upstream_commands.py reads them from the page).
"""

from __future__ import annotations

import argparse
import os
import sys

from nemotron3_super.ranks import reports_here

TRUST_REMOTE_CODE_NOTE = ("note: --trust-remote-code is accepted for the upstream commands and executes nothing: "
                          "this package reads Nemotron-H with its own code and transformers' built-in NemotronH")
PARALLEL_NOTE = ("note: {command} runs in this one process; --tp/--ep/--pp split the weights over torchrun's ranks "
                 "(conversion is bit-exact at every split, so the result is the same) and are ignored here")
_said: set[str] = set()


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", "--trust_remote_code", dest="trust_remote_code", action="store_true",
                        help="accepted (upstream spelling); executes nothing")


def add_parallel_sizes(parser: argparse.ArgumentParser) -> None:
    """--tp/--ep/--pp for roundtrip (split over torchrun's ranks) and compare (one process), as the upstream page
    passes them."""
    for flag in ("--tp", "--ep", "--pp"):
        parser.add_argument(flag, type=int, default=1, help="under torchrun: the split of the weights over its "
                            "ranks (roundtrip); in one process: ignored, with a note")


def say_once(key: str, message: str) -> None:
    """Print ``message`` to stderr the first time ``key`` is seen in this process (torchrun: rank 0 only)."""
    if key not in _said and reports_here():
        _said.add(key)
        print(message, file=sys.stderr)


def notes(args: argparse.Namespace) -> None:
    """The one-line notes the upstream-only flags call for."""
    if getattr(args, "trust_remote_code", False):
        say_once("trust_remote_code", TRUST_REMOTE_CODE_NOTE)
    if args.command in ("roundtrip", "compare") and any(getattr(args, n, 1) != 1 for n in ("tp", "ep", "pp")) \
            and (args.command == "compare" or not _under_torchrun()):
        say_once("parallel", PARALLEL_NOTE.format(command=args.command))


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_sizes(args: argparse.Namespace) -> dict[str, int]:
    """``--tp/--ep/--pp`` of a roundtrip as it runs: split over torchrun's ranks, or 1 in a single process
    (where :func:`notes` said they are ignored)."""
    if not _under_torchrun():
        return {"tp": 1, "ep": 1, "pp": 1}
    return {n: getattr(args, n, 1) for n in ("tp", "ep", "pp")}


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """``--seq-length`` and ``--config-file`` as the host's example training scripts take them."""
    parser.add_argument("--seq-length", type=int, help="model and dataset sequence length (tokens)")
    parser.add_argument("--config-file", metavar="YAML",
                        help="YAML of config sections (model:, train:, ...) applied before the dotted overrides")


def _flatten(tree: object, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [o for k, v in tree.items() for o in _flatten(v, f"{prefix}{k}.")]
    import json

    return [f"{prefix[:-1]}={json.dumps(tree) if isinstance(tree, str) else tree}"] if prefix else []


def training_overrides(args: argparse.Namespace) -> list[str]:
    """Dotted overrides for ``--config-file`` (first) and ``--seq-length``; the command line's own come after
    them, so they win. A YAML that is not a mapping of sections is an error naming the file."""
    out: list[str] = []
    if args.config_file:
        import yaml

        try:
            with open(args.config_file, encoding="utf-8") as fh:
                tree = yaml.safe_load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"--config-file {args.config_file}: no such file") from None
        if not isinstance(tree, dict):
            raise ValueError(f"--config-file {args.config_file}: expected a mapping of config sections "
                             f"(model:, train:, ...), got {type(tree).__name__}")
        out += _flatten(tree)
    if args.seq_length is not None:
        out += [f"model.seq_length={args.seq_length}", f"dataset.seq_length={args.seq_length}"]
    return out
