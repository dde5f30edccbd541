"""What train_step.py prints and writes: ratios, the markdown table, FLOP shares, versions, JSON."""

from __future__ import annotations

import importlib.metadata
import statistics
from typing import Any

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.flops import forward_flops_per_token


def fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """tokens/s of each ``ours`` row / the host row on the same Mamba path; ``same_shape`` says whether
    the two rows ran the same model shape (the apples-to-apples ratio) or not."""
    for r in rows:
        host = next((h for h in rows if h["impl"] == "host" and h["mamba_path"] == r["mamba_path"]), None)
        if r["impl"] == "ours" and host and r.get("tokens_per_s") and host.get("tokens_per_s"):
            r["ratio_vs_host"] = r["tokens_per_s"] / host["tokens_per_s"]
            r["ratio_same_shape"] = r["shape_config"] == host["shape_config"]


def iqr(values: list[float]) -> str:
    """Interquartile range of step times, e.g. "288-435" (ms): how much a shared host's load moved them."""
    if len(values) < 2:
        return "—"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.0f}-{q3:.0f}"


def paired_cell(paired: dict[str, Any] | None) -> str:
    if paired is None:
        return "—"
    if "error" in paired:
        return f"failed: {paired['error'][:60]}"
    return f"{paired['ratio_median']:.3f} ({paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f})"


def row_label(row: dict[str, Any]) -> str:
    """"ours (grouped)", "ours (sequential)" or "host": the table's impl column."""
    return f"{row['impl']} ({row['experts']})" if row.get("experts") else row["impl"]


def path_agreement(rows: list[dict[str, Any]]) -> list[str]:
    """Same model, same seed, same batch on each Mamba path, and with either expert module (both draw the
    same initial weights): the first timed step's loss (after the warm-up updates) must agree to bf16
    rounding, or a path / module computes something else."""
    lines = []
    groups = {"mamba path": lambda r: (row_label(r), r["shape"]), "expert module": lambda r: (
        r["impl"], r["shape"], r["mamba_path"]) if r.get("experts") else None}
    for varies, key in groups.items():
        for group in dict.fromkeys(key(r) for r in rows if key(r)):
            losses = {r["mamba_path"] if varies == "mamba path" else r["experts"]: r["loss_first"]
                      for r in rows if key(r) == group and "loss_first" in r}
            if len(losses) < 2:
                continue
            ref = next(iter(losses.values()))
            spread = max(abs(v - ref) for v in losses.values()) / abs(ref)
            lines.append(f"loss after warm-up by {varies}, {' @ '.join(group[:2])}"
                         + (f", mamba {group[2]}" if len(group) > 2 else "") + ": "
                         + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                         + f" (largest relative difference {spread:.1e})")
    return lines


def markdown_table(rows: list[dict[str, Any]], host_differences: list[str]) -> str:
    head = ("| impl | shape | mamba path | params (B) | step ms (median (IQR)) | tokens/s | TFLOP/s | peak GiB "
            "| ratio vs host (tokens/s ours / host) | paired ratio (interleaved, IQR) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {row_label(r)} | {r['shape']} | {r['mamba_path']} | failed: {r['error'][:100]} "
                         "| | | | | | |")
            continue
        ratio = r.get("ratio_vs_host")
        ratio_s = "—" if ratio is None else f"{ratio:.3f}" if r["ratio_same_shape"] else f"({ratio:.3f})†"
        lines.append(f"| {row_label(r)} | {r['shape']} | {r['mamba_path']} | {r['params'] / 1e9:.3f} "
                     f"| {r['step_ms_median']:.1f} ({iqr(r['step_ms'])}) | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} "
                     f"| {fmt(r['peak_gib'], '.2f')} | {ratio_s} | {paired_cell(r.get('paired'))} |")
    if any(r["shape"] == "host-buildable" for r in rows):
        lines.append("\nhost-buildable shape = the full shape with " + "; ".join(host_differences) + ".")
    if any(r.get("ratio_vs_host") is not None and not r["ratio_same_shape"] for r in rows):
        lines.append("† different shape from the host row (full latent shape vs the host-buildable one): "
                     "a tokens/s ratio across shapes, not an implementation comparison.")
    return "\n".join(lines)


def print_flops(label: str, arch: SuperArchitecture, seq: int, mtp_depths: int) -> None:
    """Forward GFLOP/token by part and the training total (3 x), so a reader sees what dominates."""
    depths = mtp_depths if arch.mtp_hybrid_override_pattern else 0
    parts = forward_flops_per_token(arch, seq, depths)
    total = sum(parts.values())
    shares = ", ".join(f"{k} {v / 1e9:.3f} ({100 * v / total:.0f}%)" for k, v in parts.items() if v)
    print(f"  {label}: forward GFLOP/token {shares}; training {3 * total / 1e9:.3f} GFLOP/token")


def versions() -> dict[str, str | None]:
    out = {}
    for dist in ("torch", "megatron-core", "megatron-bridge", "transformers", "mamba-ssm", "causal-conv1d",
                 "triton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
