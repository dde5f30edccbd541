"""The host's known fallback warnings, filtered by module and message; every other warning goes through.

Without Transformer Engine or Apex, importing Megatron-Bridge / megatron-core prints about 20 lines of
``UserWarning: ... Falling back to ...`` (torch optimizers, local multi-tensor kernels, torch norms, local
expert linears) and logs the traceback of each TE symbol it fails to import. They say one thing, which
:func:`summary` says in one line. Each filter names the host module prefix and the message it matches,
so our own warnings (the bridge replacement, the precision fallback) and anything a plugin or the user's
code reports still reach the user. Installed by ``apply_host_fixes()``; ``show_all()`` (the ``-v`` flag of
our commands) removes the filters; :func:`command_output` is what our commands do before importing the host.
"""

from __future__ import annotations

import importlib.abc
import logging
import re
import sys
import warnings
from dataclasses import dataclass

from nemotron3_super.ranks import reports_here


@dataclass(frozen=True)
class KnownWarning:
    """One host fallback message: ``warnings`` (by module) or ``logging`` (by logger name)."""

    module: str  # regex on the warning's module (warnings) or the exact logger name (logging)
    message: str  # warnings: the message's literal start; logging: a regex matched at its start
    category: type[Warning] = UserWarning
    via_logging: bool = False


KNOWN: tuple[KnownWarning, ...] = (
    # megatron-core: optimizers, clip_grads, FSDP mixed precision, training utils (TE and Apex absent)
    KnownWarning(r"megatron\.(core|training)\.", "Transformer Engine and Apex are not installed. Falling back to "),
    KnownWarning(r"megatron\.core\.", "Apex is not installed. Falling back to Torch Norm"),
    # megatron-core's spec provider asks TE's version and gets 0.0.0 when TE is absent
    KnownWarning(r"megatron\.core\.extensions\.", "Only transformer-engine>=1.7.0 supports MoE experts, but your "
                                                "version is 0.0.0"),
    # imported by the host's model zoo, never used by us
    KnownWarning(r"megatron\.core\.models\.mimo\.", "MimoModelConfig is experimental and still under active development"),
    # torch warns at every torch.jit.script use, attributed to its own module (stacklevel 1), so the caller
    # cannot be told apart: megatron-core decorates its fused kernels with it when imported
    KnownWarning(r"torch\.jit\._script", "`torch.jit.script` is deprecated", category=FutureWarning),
    # Megatron-Bridge logs, with a traceback, every TE symbol its optional imports do not find
    KnownWarning("megatron.bridge.utils.import_utils", r"Import of \w+ from (megatron\.core\.extensions\."
                                                       r"transformer_engine|transformer_engine)", via_logging=True),
    # torch, when the host's Mamba kernels import torch.utils.cpp_extension on a machine without CUDA
    KnownWarning("torch.utils.cpp_extension", r"No CUDA runtime is found, using CUDA_HOME", via_logging=True),
    KnownWarning("megatron.bridge.utils.fusions", r"gradient_accumulation_fusion requires either TransformerEngine "
                                                  r"or the fused_weight_gradient_mlp_cuda APEX extension",
                 via_logging=True),
)


class _KnownLogFilter(logging.Filter):
    """Drops the known messages of one host logger (records of other loggers are not seen here)."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


_installed: list[tuple] = []  # the warnings.filters entries added, to find them again in show_all()
_log_filters: dict[str, _KnownLogFilter] = {}


def install() -> None:
    """Register the filters (idempotent; imports nothing of the host)."""
    if _installed or _log_filters:
        return
    for known in KNOWN:
        if known.via_logging:
            log_filter = _log_filters.get(known.module)
            if log_filter is None:
                log_filter = _log_filters[known.module] = _KnownLogFilter([])
                logging.getLogger(known.module).addFilter(log_filter)
            log_filter.patterns.append(re.compile(known.message))
            continue
        warnings.filterwarnings("ignore", message=re.escape(known.message), category=known.category,
                                module=known.module)
        _installed.append(warnings.filters[0])


def show_all() -> None:
    """Undo :func:`install` in this process (``-v``): every host warning is shown again."""
    for entry in _installed:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
    warnings._filters_mutated()  # type: ignore[attr-defined] - the module's cache of filter decisions
    _installed.clear()
    for name, log_filter in _log_filters.items():
        logging.getLogger(name).removeFilter(log_filter)
    _log_filters.clear()


_announced = False


def command_output(*, verbose: bool, quiet_info: bool = True) -> int:
    """What our commands (CLI, launch modules) do before importing the host: its known TE/Apex fallback
    warnings become one summary line (stderr) and its INFO chatter is off (it sets the root logger to INFO
    at import), so the output is the report or the plan; every other warning (ours, a plugin's, the
    host's others) still shows. ``verbose`` (``-v``): everything, the host's INFO lines included.
    ``quiet_info=False`` (a training launch) keeps the host's INFO log. Returns the previous
    ``logging.disable`` level, for callers that run in someone else's process to restore."""
    previous = logging.root.manager.disable
    if verbose:
        show_all()
        return previous
    install()
    if quiet_info:
        logging.disable(logging.INFO)
    if HOST_PACKAGE not in sys.modules and not any(isinstance(f, _AnnounceOnHostImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AnnounceOnHostImport())  # the summary comes when the host is imported
    return previous


HOST_PACKAGE = "megatron.core"  # importing it raises the fallback warnings


class _AnnounceOnHostImport(importlib.abc.MetaPathFinder):
    """Prints the summary when the host is first imported, i.e. when its fallback warnings would show; a
    command that stops before (a refused output folder) prints only its one error line. Finds nothing."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == HOST_PACKAGE:
            announce()
        return None


def announce() -> None:
    """Print :func:`summary` to stderr once per process, on rank 0 only under torchrun."""
    global _announced
    line = summary()
    if line and not _announced and reports_here():
        print(line, file=sys.stderr)
    _announced = True


def summary() -> str | None:
    """The one line that stands for the filtered messages, or None when there is nothing to say."""
    from nemotron3_super.host_compat.te_import import have_transformer_engine
    from nemotron3_super.installed import module_installed

    te, apex = have_transformer_engine(), module_installed("apex")
    if te and apex:
        return None
    absent = " and ".join(name for name, ok in (("Transformer Engine", te), ("Apex", apex)) if not ok)
    uses = ([] if te else ["local layer spec"]) + ([] if te or apex else ["torch optimizers"])
    return (f"{absent} absent: {', '.join(uses) or 'torch norms'} (the host's fallback warnings hidden; -v shows them)")
