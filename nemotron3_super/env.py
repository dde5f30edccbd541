"""``nemotron3-super env``: what will actually run on this machine, in one table to paste into a bug report.

Versions of the stack, the GPUs seen, and the decisions the library derives from them: the layer spec
``spec_impl="auto"`` picks, the Mamba path, whether each low-precision recipe runs or falls back, the
bridge policy and the bridge that serves each architecture, the plugins loaded. Every decision is asked
of the function the library (or the host) uses to make it; none is re-derived here. Every probe is
isolated: a package that is missing or fails to import becomes a row that says so, never an exception.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

# (row label, distribution names to try): the stack, in the order a reader checks it
PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nemotron3-super", ("nemotron3-super",)),
    ("torch", ("torch",)),
    ("megatron-core", ("megatron-core",)),
    ("megatron-bridge", ("megatron-bridge",)),
    ("transformers", ("transformers",)),
    ("peft", ("peft",)),
    ("transformer-engine", ("transformer-engine", "transformer-engine-torch", "transformer_engine")),
    ("mamba-ssm", ("mamba-ssm", "mamba_ssm")),
    ("causal-conv1d", ("causal-conv1d", "causal_conv1d")),
    ("triton", ("triton",)),
    ("apex", ("apex",)),
    ("flash-attn", ("flash-attn", "flash_attn")),
    ("nvidia-modelopt", ("nvidia-modelopt",)),
    ("nemo-run", ("nemo-run", "nemo_run")),
    ("pluggy", ("pluggy",)),
)
# compiled extensions whose presence decides a path: (row label, module, what it is for)
KERNELS: tuple[tuple[str, str, str], ...] = (
    ("mamba-ssm CUDA kernels", "selective_scan_cuda", "Mamba-1 selective scan; Nemotron-H uses Mamba-2 only"),
    ("causal-conv1d CUDA kernels", "causal_conv1d_cuda", "the fused conv of Mamba's memory-efficient path"),
)


@dataclass(frozen=True)
class Row:
    """One line of the report."""

    section: str
    name: str
    value: str
    detail: str = ""


def _safe(section: str, name: str, probe: Callable[[], Iterable[Row]]) -> list[Row]:
    """Run one probe; any failure (missing package, broken install) becomes a row, never an exception."""
    try:
        return list(probe())
    except Exception as exc:  # noqa: BLE001 - the report must never fail
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [Row(section, name, "unavailable", f"{type(exc).__name__}: {first}"[:300])]


# ---------------------------------------------------------------------- system and packages
def _system() -> Iterable[Row]:
    yield Row("system", "python", platform.python_version(), sys.executable)
    yield Row("system", "platform", platform.platform())


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _packages() -> Iterable[Row]:
    for label, names in PACKAGES:
        version = _version(names)
        detail = ""
        if label == "torch" and version is not None:
            import torch

            cuda = torch.version.cuda
            detail = f"CUDA build {cuda}" if cuda else "CPU-only build"
        yield Row("packages", label, version or "not installed", detail)


def _kernel(label: str, module: str, purpose: str) -> Iterable[Row]:
    # PathFinder looks at files only: a stand-in module in sys.modules (host_compat's) is not the extension
    if importlib.machinery.PathFinder.find_spec(module) is None:
        yield Row("packages", label, "not built", f"{module} absent ({purpose})")
        return
    if module not in sys.modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken build is a finding, not a crash
            yield Row("packages", label, "present, does not import", f"{module}: {type(exc).__name__}: {exc}"[:300])
            return
    yield Row("packages", label, "importable", f"{module} ({purpose})")


def _gpus() -> Iterable[Row]:
    import torch

    if not torch.cuda.is_available():
        yield Row("gpus", "CUDA GPUs", "none", "torch.cuda.is_available() is False")
        return
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        yield Row("gpus", f"cuda:{i}", props.name,
                  f"compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB")


# ---------------------------------------------------------------------- decisions
def _host_fixes() -> Iterable[Row]:
    """What every command of this library installs before it imports the host: the decisions below
    must be the ones a real run sees."""
    from nemotron3_super.host_compat import apply_host_fixes

    apply_host_fixes()  # applied by importing the package already; called here so the report says so
    return ()


def _layer_spec() -> Iterable[Row]:
    from nemotron3_super.layer_specs import resolve_spec_kind, te_unusable_reason

    kind = resolve_spec_kind("auto")
    reason = te_unusable_reason()
    yield Row("decisions", 'layer spec (spec_impl="auto")', kind,
              reason or "Transformer Engine is installed and a CUDA GPU is visible")


def _finalized(**overrides: Any) -> tuple[Any, list[str]]:
    """A tiny SuperModelProvider after ``finalize()`` (spec_impl="auto"): the provider's own decisions,
    and the warnings it raised making them. Builds no model (TransformerConfig checks only, milliseconds)."""
    from nemotron3_super.provider import tiny_super_provider

    provider = tiny_super_provider(**overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provider.finalize()
    return provider, [str(w.message) for w in caught]


def _precisions() -> Iterable[Row]:
    """What a provider asked for each low-precision plan ends up running, and why (precision's own
    ``unsupported_reason``; the fallback target is the provider's choice, read after ``finalize()``)."""
    from nemotron3_super import precision

    for wanted in precision.PRECISIONS:
        if wanted == precision.BF16:
            continue
        provider, messages = _finalized(precision=wanted)
        got = provider.precision
        reason = precision.unsupported_reason(wanted, provider.fp8_scaling)
        if reason is None and got != wanted:  # the provider found another problem (e.g. the local spec)
            reason = next((m for m in messages if f"precision={wanted!r}" in m), "")
        label = f"precision {wanted.upper()}" + (f" ({provider.fp8_scaling} scaling)" if wanted == "fp8" else "")
        yield Row("decisions", label, "runs" if got == wanted else f"falls back to {got}",
                  reason or "supported here")


def _provider_defaults() -> Iterable[Row]:
    """Provider fields that follow the installation (installed.py, the layer spec), as finalize() left them."""
    from nemotron3_super import installed

    provider, _ = _finalized()
    backend = getattr(provider.attention_backend, "name", str(provider.attention_backend))
    yield Row("decisions", "attention backend", backend,
              "flash-attn importable" if installed.have_flash_attn() else "flash-attn not installed")
    yield Row("decisions", "gradient_accumulation_fusion", str(provider.gradient_accumulation_fusion),
              f"Apex {installed.APEX_WGRAD_MODULE} " + ("importable" if installed.have_apex_wgrad_fusion()
                                                         else "not installed"))


def _mamba() -> Iterable[Row]:
    import torch

    from nemotron3_super import mamba_path

    blocked = mamba_path.mamba_ssm_unavailable()
    if blocked:
        yield Row("decisions", "Mamba layers", "cannot be built", blocked)
        return
    mem_eff_default = _finalized()[0].use_mamba_mem_eff_path
    why_not = mamba_path.mem_eff_unavailable()
    if mem_eff_default and why_not:
        value = "mem-eff path unavailable"
        detail = (f"use_mamba_mem_eff_path=True (the default) needs {why_not}; set "
                  f"model.use_mamba_mem_eff_path=False to run {mamba_path.mamba_kernels(False)}")
    else:
        value = "mem-eff (fused)" if mem_eff_default else "unfused"
        detail = mamba_path.mamba_kernels(bool(mem_eff_default))
    if not torch.cuda.is_available():
        detail += "; no CUDA GPU: the Triton kernels cannot run (conversion works, Mamba forward does not)"
    yield Row("decisions", "Mamba path", value, detail)


def _bridges(plugin_set: Any) -> Iterable[Row]:
    from nemotron3_super.plugins.host import ENV_BRIDGE_POLICY, install_into_host, resolve_bridge_policy

    policy = resolve_bridge_policy()
    source = f"from {ENV_BRIDGE_POLICY}" if os.environ.get(ENV_BRIDGE_POLICY) else "default"
    yield Row("decisions", "bridge policy", policy, source)
    report = install_into_host(plugin_set, bridge_policy=policy, recipes=False)
    notes = report.bridge_notes()
    for arch, bridge in sorted(report.bridges.items()):
        detail = notes[arch]
        yield Row("decisions", f"bridge for {arch}", bridge, detail)


def _plugins(plugin_set: Any) -> Iterable[Row]:
    for info in plugin_set.plugins:
        origin = f"{info.distribution or '?'} {info.version or '?'}"
        if info.errors:
            yield Row("plugins", info.label, "failed to load", f"{origin}: {'; '.join(info.errors)}")
        else:
            kinds = ", ".join(f"{r.kind}:{r.name}" for r in info.registrations) or "nothing registered"
            yield Row("plugins", info.label, "loaded", f"{origin}: {kinds}")
    if plugin_set.skipped:
        yield Row("plugins", "skipped", ", ".join(plugin_set.skipped), "by MEGATRON_BRIDGE_PLUGINS")
    for clash in plugin_set.clashes:
        yield Row("plugins", f"{clash.kind} {clash.name}", "clash: refused", clash.message())
    if plugin_set.selection_error:
        yield Row("plugins", "MEGATRON_BRIDGE_PLUGINS", "matches no plugin: " + ", ".join(plugin_set.unmatched),
                  plugin_set.selection_error)
    if not plugin_set.plugins:
        yield Row("plugins", "plugins", "none found", "entry-point group megatron_bridge.plugins")


# ---------------------------------------------------------------------- report
def collect() -> tuple[list[Row], float]:
    """Every row of the report and the seconds it took. Warnings raised while probing (the host's
    import-time fallbacks, ours) become rows of their own instead of interleaving with the table."""
    t0 = time.perf_counter()
    rows = _safe("system", "system", _system) + _safe("packages", "packages", _packages)
    for label, module, purpose in KERNELS:
        rows += _safe("packages", label, lambda a=(label, module, purpose): _kernel(*a))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows += _safe("system", "host fixes", _host_fixes)
        rows += _safe("gpus", "CUDA GPUs", _gpus)
        rows += _safe("decisions", 'layer spec (spec_impl="auto")', _layer_spec)
        rows += _safe("decisions", "Mamba path", _mamba)
        rows += _safe("decisions", "precision", _precisions)
        rows += _safe("decisions", "provider defaults", _provider_defaults)
        plugin_set = None
        try:
            from nemotron3_super.plugins.manager import load_plugins

            plugin_set = load_plugins()
        except Exception as exc:  # noqa: BLE001 - strict mode from the environment, broken pluggy, ...
            rows.append(Row("plugins", "plugin discovery", "failed", f"{type(exc).__name__}: {exc}"[:300]))
        if plugin_set is not None:
            rows += _safe("decisions", "bridges", lambda: _bridges(plugin_set))
            rows += _safe("plugins", "plugins", lambda: _plugins(plugin_set))
    seen: set[str] = set()
    for w in caught:
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        if text and text not in seen:
            seen.add(text)
            rows.append(Row("warnings while probing", w.category.__name__, text[:200],
                            f"{w.filename.rpartition('site-packages/')[2]}:{w.lineno}"))
    return rows, time.perf_counter() - t0


def as_json(rows: list[Row], seconds: float) -> dict[str, Any]:
    """``{"sections": {section: [row, ...]}, "seconds": ...}`` (rows keep their order)."""
    sections: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        sections.setdefault(row.section, []).append({k: v for k, v in asdict(row).items() if k != "section"})
    return {"sections": sections, "seconds": round(seconds, 2)}


def render(rows: list[Row], seconds: float) -> str:
    """The table: one header per section, then name / value / detail columns."""
    width_name = max(len(r.name) for r in rows)
    width_value = min(40, max(len(r.value) for r in rows))
    lines: list[str] = []
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines += ([""] if lines else []) + [f"## {section}"]
        lines.append(f"  {row.name.ljust(width_name)}  {row.value.ljust(width_value)}  {row.detail}".rstrip())
    lines.append(f"\n(collected in {seconds:.1f} s; paste this into bug reports)")
    return "\n".join(lines)
