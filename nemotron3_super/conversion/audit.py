"""Bit-exact audit of two HF checkpoint folders, streamed tensor by tensor.

Equality is on the bits (same dtype, same shape, identical bytes; NaNs compare equal to themselves), not
``allclose``. The report calls out the MTP tensors and the FP32 tensors (router correction biases), the
two things existing tools lose.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nemotron3_super.conversion.quantized import DequantizedCheckpoint, open_checkpoint

_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, same shape, same bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        as_int = _SAME_WIDTH_INT[a.element_size()]
        return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
    return torch.equal(a, b)


@dataclass
class AuditReport:
    reference: str
    candidate: str
    tensors: int = 0
    elements: int = 0
    bytes: int = 0
    dtypes: Counter = field(default_factory=Counter)
    mtp_tensors: int = 0
    mtp_elements: int = 0
    fp32_tensors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in reference, not in candidate
    extra: list[str] = field(default_factory=list)  # in candidate only
    different: list[str] = field(default_factory=list)  # name: why
    dequantized: str = ""  # the reference is quantized: what its direct dequantization was

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def render(self) -> str:
        lines = [f"audit: {self.candidate}", f"  against {self.reference}"
                 + (" (dequantized directly from its quantized weights)" if self.dequantized else ""),
                 f"  tensors compared bit-exactly: {self.tensors:,} ({self.elements:,} elements, "
                 f"{self.bytes / 2**20:,.1f} MiB)",
                 "  dtypes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.dtypes.items())),
                 f"  MTP tensors: {self.mtp_tensors:,} ({self.mtp_elements:,} elements)",
                 f"  FP32 tensors: {len(self.fp32_tensors):,}"
                 + (f" (e.g. {self.fp32_tensors[0]})" if self.fp32_tensors else "")]
        if self.dequantized:
            lines.append(f"  reference {self.dequantized}")
        for title, items in (("missing", self.missing), ("extra", self.extra), ("different", self.different)):
            if items:
                lines.append(f"  {title}: {len(items)}: " + "; ".join(items[:10]))
        lines.append("  result: " + ("IDENTICAL (every tensor bit-exact)" if self.ok else "DIFFERENT"))
        return "\n".join(lines)


def audit(reference: str | Path, candidate: str | Path) -> AuditReport:
    """Compare every tensor of ``candidate`` with ``reference`` (peak memory: two tensors)."""
    ref, cand = open_checkpoint(reference), open_checkpoint(candidate)
    report = AuditReport(str(reference), str(candidate))
    if isinstance(ref, DequantizedCheckpoint):
        report.dequantized = ref.summary.render()
    report.missing = sorted(set(ref.tensors) - set(cand.tensors))
    report.extra = sorted(set(cand.tensors) - set(ref.tensors))
    for name in sorted(set(ref.tensors) & set(cand.tensors), key=lambda n: (ref.tensors[n].file.name, n)):
        a, b = ref.get(name), cand.get(name)
        report.tensors += 1
        report.elements += a.numel()
        report.bytes += a.numel() * a.element_size()
        report.dtypes[str(a.dtype).replace("torch.", "")] += 1
        if name.startswith("mtp."):
            report.mtp_tensors += 1
            report.mtp_elements += a.numel()
        if a.dtype == torch.float32:
            report.fp32_tensors.append(name)
        if not bits_equal(a, b):
            why = (f"dtype {a.dtype} vs {b.dtype}" if a.dtype != b.dtype else
                   f"shape {list(a.shape)} vs {list(b.shape)}" if a.shape != b.shape else "values differ")
            report.different.append(f"{name} ({why})")
    ref.close()
    cand.close()
    return report
