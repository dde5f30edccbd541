"""NVIDIA ModelOpt FP8 / NVFP4 / MIXED_PRECISION HF checkpoints, read as dequantized (BF16 or FP32) weights.

The quantized layout is validated up front from the headers and the two JSON files (``config.json``'s
``quantization_config`` and ``hf_quant_config.json``): every quantized weight must have its scales with the
right dtypes and shapes, and the format of each module comes from what the files declare (``quantized_layers``
in MIXED_PRECISION, one ``quant_algo`` otherwise), cross-checked with the tensor's dtype and shape, never from
its name (the published Super NVFP4 has NVFP4 shared experts in some layers, FP8 in others).

Dequantization follows ModelOpt 0.47 (``NVFP4QTensor.dequantize``, ``FP8QTensor.dequantize``) operation for
operation in float32, so the values are bit-identical to ModelOpt's; the cast to the model dtype rounds once.
The result carries the release's quantization error: it is not the BF16 release.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch

from nemotron3_super.conversion.hf_io import (SAFETENSORS_DTYPES, CheckpointError, HFCheckpoint, TensorInfo,
                                              config_dtype)

QUANT_CONFIG_FILE = "hf_quant_config.json"  # ModelOpt's own description of the quantization
ALGOS = ("FP8", "NVFP4", "MIXED_PRECISION")
NVFP4_GROUP = 16  # elements per FP8 block scale along the input dimension
WEIGHT_PARTS = ("weight_scale_2", "weight_scale", "weight")  # longest suffix first
ACTIVATION_SCALES = ("input_scale", "k_scale", "v_scale")  # inference-time activation / KV scales: not weights
# ModelOpt's E2M1 table (nvfp4_tensor.py): index = 4-bit code, bit 3 = sign; code 8 is +0 there, kept for the bits
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=torch.float32)
_BYTE = torch.arange(256)
BYTE_PAIRS = torch.stack([E2M1[_BYTE & 0x0F], E2M1[_BYTE >> 4]], dim=-1)  # byte -> (even col: low, odd col: high)
_PAIR_BITS = BYTE_PAIRS.view(torch.int64).view(-1)  # the two float32 of a byte as one 8-byte word: one gather
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def dequantize_nvfp4(packed: torch.Tensor, scale: torch.Tensor, scale_2: torch.Tensor) -> torch.Tensor:
    """float32 ``[out, in]`` from uint8 ``[out, in/2]`` (two E2M1 codes a byte, low nibble = even column),
    float8_e4m3fn block scales ``[out, in/16]`` and the float32 global scale: ``E2M1[code] * (scale * scale_2)``,
    ModelOpt's operations in ModelOpt's order (so bit-identical)."""
    out, half = packed.shape
    values = torch.take(_PAIR_BITS, packed.long()).view(torch.float32).view(out, -1, NVFP4_GROUP)  # [out, in/16, 16]
    block = scale.float() * scale_2.float().reshape(())  # float32 [out, in/16]
    return values.mul_(block.unsqueeze(-1)).view(out, 2 * half)


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``weight * scale`` (per-tensor scale), as ModelOpt's FP8 dequantization in float32."""
    return weight.float() * scale.float().reshape(())


@dataclass(frozen=True)
class QuantScheme:
    """What the checkpoint's JSON files declare: one algorithm, or (MIXED_PRECISION) one per module."""

    algo: str
    source: str  # the file(s) it was read from, for messages
    group_size: int | None = None
    layers: dict[str, str] = field(default_factory=dict)  # MIXED: module (or prefix / pattern) -> FP8 | NVFP4
    exclude: tuple[str, ...] = ()  # modules left unquantized (names or patterns)

    def declared(self, module: str) -> str | None:
        """The format the files declare for ``module`` (None: unquantized). MIXED keys may name a parent
        (ModelOpt 0.47 lists ``...mixer.experts`` for all experts of a layer); the longest match wins."""
        if self.algo != "MIXED_PRECISION":
            return None if any(_matches(module, p) for p in self.exclude) else self.algo
        for prefix in _parents(module):  # exact names and parents: a dict lookup each (Super lists ~5,000)
            if prefix in self.layers:
                return self.layers[prefix]
        keys = [k for k in self.layers if _is_pattern(k) and fnmatchcase(module, k)]
        return self.layers[max(keys, key=len)] if keys else None


def _parents(module: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]`` (longest first)."""
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


def _matches(module: str, key: str) -> bool:
    if _is_pattern(key):
        return fnmatchcase(module, key)
    return module == key or module.startswith(key + ".")


def _clean(key: str) -> str:
    """A module key without the sentinel ModelOpt 0.47 + transformers 5.12 append (``'.\\x00backbone...'``)."""
    return key.split("\x00", 1)[0].rstrip(".")


def _group_size(algo: str, value: Any, where: str) -> int | None:
    if algo != "NVFP4":
        return None
    size = NVFP4_GROUP if value is None else value  # ModelOpt's default when absent
    if size != NVFP4_GROUP:
        raise CheckpointError(f"{where}: NVFP4 group_size={size!r}, expected {NVFP4_GROUP} (one FP8 scale per "
                              f"{NVFP4_GROUP} weights, the only NVFP4 layout ModelOpt writes)")
    return size


def _check_algo(algo: Any, where: str, allowed: tuple[str, ...] = ALGOS) -> str:
    if algo not in allowed:
        raise CheckpointError(f"{where}: quant_algo={algo!r} is not supported: this converter dequantizes "
                              f"ModelOpt {', '.join(allowed)} (convert the BF16 release instead)")
    return algo


def read_scheme(folder: Path, config: dict[str, Any]) -> QuantScheme | None:
    """The quantization the folder declares (None: none). ``hf_quant_config.json`` wins where both files
    describe it; their ``quant_algo`` must agree."""
    qc, path = config.get("quantization_config") or {}, folder / QUANT_CONFIG_FILE
    if not isinstance(qc, dict):
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config={qc!r} is a {type(qc).__name__}, "
                              "expected an object such as {\"quant_method\": \"modelopt\", \"quant_algo\": ...}")
    if qc and qc.get("quant_method") != "modelopt":
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config.quant_method="
                              f"{qc.get('quant_method')!r}: only NVIDIA ModelOpt checkpoints (quant_method "
                              "'modelopt': FP8, NVFP4, MIXED_PRECISION) are dequantized here")
    hq: dict[str, Any] = {}
    if path.is_file():
        try:
            hq = json.loads(path.read_text(encoding="utf-8")).get("quantization") or {}
        except (json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: not a ModelOpt quantization file ({exc})") from exc
    if not qc and not hq:
        return None
    if qc and hq and qc.get("quant_algo") != hq.get("quant_algo"):
        raise CheckpointError(f"{folder}: config.json says quant_algo={qc.get('quant_algo')!r}, "
                              f"{QUANT_CONFIG_FILE} says {hq.get('quant_algo')!r}: expected the same")
    spec, where = (hq, str(path)) if hq else (qc, str(folder / "config.json"))
    algo = _check_algo(spec.get("quant_algo"), where)
    group = spec.get("group_size")
    if group is None and not hq:  # config.json's llm-compressor form keeps it in the weight groups
        group = next((g.get("weights", {}).get("group_size") for g in (qc.get("config_groups") or {}).values()
                      if g.get("weights", {}).get("num_bits") == 4), None)
    layers = {}
    for key, entry in (spec.get("quantized_layers") or {}).items():
        module = _clean(key)
        layers[module] = _check_algo(entry.get("quant_algo"), f"{where}: quantized_layers[{module!r}]",
                                     ("FP8", "NVFP4"))
        _group_size(layers[module], entry.get("group_size"), f"{where}: quantized_layers[{module!r}]")
    if algo == "MIXED_PRECISION" and not layers:
        raise CheckpointError(f"{where}: quant_algo MIXED_PRECISION without quantized_layers (which module has "
                              "which format is unknown)")
    exclude = tuple(_clean(k) for k in (spec.get("exclude_modules") or spec.get("ignore") or []))
    return QuantScheme(algo, where, _group_size(algo, group, where), layers, exclude)


@dataclass(frozen=True)
class QuantizedWeight:
    """One quantized weight on disk: packed data, block / tensor scale, NVFP4's global scale."""

    format: str  # FP8 | NVFP4
    weight: TensorInfo
    scale: TensorInfo
    scale_2: TensorInfo | None
    shape: tuple[int, int]  # dequantized [out, in]

    @property
    def nbytes(self) -> int:
        """Bytes read to dequantize it."""
        return sum(p.nbytes for p in (self.weight, self.scale, self.scale_2) if p is not None)


def _expected_parts(fmt: str, out: int, cols: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """part -> (safetensors dtype, shape) of one quantized Linear (``()``: a scalar)."""
    if fmt == "NVFP4":  # cols = packed bytes per row = in / 2
        return {"weight": ("U8", (out, cols)), "weight_scale": ("F8_E4M3", (out, 2 * cols // NVFP4_GROUP)),
                "weight_scale_2": ("F32", ())}
    return {"weight": ("F8_E4M3", (out, cols)), "weight_scale": ("F32", ())}


def _check_weight(module: str, fmt: str, parts: dict[str, TensorInfo], source: str) -> list[str]:
    """Problems of one declared-quantized module's tensors against its format (empty: fine)."""
    weight = parts["weight"]
    if len(weight.shape) != 2:
        return [f"{module}.weight is {weight.dtype}{list(weight.shape)}: expected a 2-D {fmt} Linear weight"]
    out, cols = weight.shape
    problems = []
    if fmt == "NVFP4" and (2 * cols) % NVFP4_GROUP:
        problems.append(f"{module}.weight has {2 * cols} input columns, not a multiple of {NVFP4_GROUP}")
    for part, (dtype, shape) in _expected_parts(fmt, out, cols).items():
        info = parts.get(part)
        if info is None:
            problems.append(f"{module}: declared {fmt} by {source} but {module}.{part} is missing")
        elif info.dtype != dtype or (info.shape != shape and not (shape == () and info.shape == (1,))):
            problems.append(f"{module}.{part} is {info.dtype}{list(info.shape)}, expected {dtype}{list(shape)} "
                            f"for the {fmt} format {source} declares")
    if fmt == "FP8" and "weight_scale_2" in parts:
        problems.append(f"{module}.weight_scale_2 (an NVFP4 global scale) present, but {source} declares FP8")
    return problems


def plan_layout(tensors: dict[str, TensorInfo], scheme: QuantScheme) -> tuple[dict[str, QuantizedWeight], set[str]]:
    """Validate the quantized layout; returns the quantized weights by weight name and the names of every
    tensor the dequantized view hides (scales, activation scales). All problems in one error."""
    modules: dict[str, dict[str, TensorInfo]] = {}
    hidden = set()
    for name, info in tensors.items():
        part = next((p for p in WEIGHT_PARTS if name.endswith("." + p)), None)
        if part:
            modules.setdefault(name[: -len(part) - 1], {})[part] = info
        elif name.rsplit(".", 1)[-1] in ACTIVATION_SCALES:
            hidden.add(name)
    problems, quantized = [], {}
    for module, parts in sorted(modules.items()):
        declared, weight = scheme.declared(module), parts.get("weight")
        scales = sorted(p for p in parts if p != "weight")
        packed = weight is not None and weight.dtype not in ("BF16", "F16", "F32")
        if weight is None:
            problems.append(f"{module}: {', '.join(scales)} present but no {module}.weight (scales without "
                            "a weight)")
        elif declared is None and (scales or packed):
            why = "excludes it" if scheme.algo != "MIXED_PRECISION" else "does not list it in quantized_layers"
            problems.append(f"{module}: weight {weight.dtype}{list(weight.shape)} with {scales or 'no scales'}, "
                            f"but {scheme.source} {why} (expected an unquantized weight)")
        elif declared and not scales and (packed or scheme.algo == "MIXED_PRECISION"):
            problems.append(f"{module}: declared {declared} by {scheme.source} but has no weight_scale "
                            f"({module}.weight is {weight.dtype}{list(weight.shape)})")
        elif declared and scales:
            found = _check_weight(module, declared, parts, scheme.source)
            problems += found
            if not found:
                cols = weight.shape[1] * (2 if declared == "NVFP4" else 1)
                quantized[f"{module}.weight"] = QuantizedWeight(declared, weight, parts["weight_scale"],
                                                                parts.get("weight_scale_2"), (weight.shape[0], cols))
                hidden.update(parts[p].name for p in scales)
    present = {prefix for m in modules for prefix in _parents(m)}
    for key, fmt in scheme.layers.items():  # (scales without a weight are reported above)
        if key not in present and not (_is_pattern(key) and any(fnmatchcase(m, key) for m in modules)):
            problems.append(f"{key}: listed as {fmt} in quantized_layers of {scheme.source}, but the checkpoint "
                            "has no tensor for it")
    if not quantized and not problems:  # a BF16 checkpoint that still carries a quantization_config
        problems.append(f"{scheme.source} declares quant_algo={scheme.algo} but no tensor is quantized (no "
                        "weight_scale anywhere): expected ModelOpt's quantized layout, or no quantization_config")
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise CheckpointError(f"{len(problems)} quantized-layout problem(s): " + "; ".join(problems[:20]) + more)
    return quantized, hidden


@dataclass
class DequantSummary:
    """What was dequantized: weights per format, bytes in (packed + scales) and out (at the output dtype)."""

    algo: str
    dtype: str
    weights: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    activation_scales: int = 0  # input / KV-cache scales: inference settings, dropped

    def render(self) -> str:
        per = ", ".join(f"{n:,} {f}" for f, n in sorted(self.weights.items()))
        return (f"dequantized ModelOpt {self.algo}: {per} weights, {self.bytes_in / 2**20:,.1f} MiB quantized -> "
                f"{self.bytes_out / 2**20:,.1f} MiB {self.dtype}; {self.activation_scales:,} activation/KV scales "
                "dropped. The weights carry the release's quantization error: this is not the BF16 release.")

    def as_dict(self) -> dict[str, Any]:
        return {"quant_algo": self.algo, "dtype": self.dtype, "weights": dict(self.weights),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


class DequantizedCheckpoint(HFCheckpoint):
    """A ModelOpt checkpoint seen as the unquantized release: ``tensors`` lists each quantized weight once
    with its dequantized shape and the release dtype (scales hidden); ``get`` dequantizes in float32, then
    casts to ``out_dtype``. ``config`` has no ``quantization_config`` (kept in ``quantization_config``)."""

    def __init__(self, source: HFCheckpoint, scheme: QuantScheme, dtype: torch.dtype | None = None) -> None:
        vars(self).update(vars(source))
        self.scheme, self.stored = scheme, source.tensors
        try:
            self.quantized, hidden = plan_layout(self.stored, scheme)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.folder}: {exc}") from None
        self.quantization_config = self.config.pop("quantization_config", None)
        release = config_dtype(self.config)
        self.out_dtype = dtype or release
        self.tensors = {n: i for n, i in self.stored.items() if n not in hidden}
        for name, q in self.quantized.items():
            self.tensors[name] = TensorInfo(name, q.weight.file, q.weight.stored_name, _DTYPE_NAMES[release],
                                            q.shape, q.weight.offset)
        self.summary = DequantSummary(scheme.algo, str(self.out_dtype).removeprefix("torch."),
                                      Counter(q.format for q in self.quantized.values()),
                                      sum(q.nbytes for q in self.quantized.values()),
                                      sum(q.shape[0] * q.shape[1] for q in self.quantized.values())
                                      * self.out_dtype.itemsize,
                                      sum(1 for n in hidden if n.rsplit(".", 1)[-1] in ACTIVATION_SCALES))

    def dequantize(self, name: str) -> torch.Tensor:
        """Quantized weight ``name`` in float32 (bit-identical to ModelOpt's dequantization)."""
        q = self.quantized[name]
        if q.format == "NVFP4":
            return dequantize_nvfp4(self.read(q.weight), self.read(q.scale), self.read(q.scale_2))
        return dequantize_fp8(self.read(q.weight), self.read(q.scale))

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name``: a quantized weight dequantized and cast to ``out_dtype``, anything else as stored."""
        return self.dequantize(name).to(self.out_dtype) if name in self.quantized else super().get(name)

    def dtype(self, name: str) -> torch.dtype:
        """The dtype ``get`` returns."""
        return self.out_dtype if name in self.quantized else super().dtype(name)

    def nbytes(self, name: str) -> int:
        """Bytes read from disk for ``name`` (a quantized weight: packed data and scales)."""
        q = self.quantized.get(name)
        return q.nbytes if q is not None else super().nbytes(name)


def open_checkpoint(folder: str | Path, dtype: torch.dtype | None = None) -> HFCheckpoint:
    """An HF folder for reading: as stored, or (a ModelOpt FP8 / NVFP4 / MIXED_PRECISION checkpoint,
    layout validated now) dequantized to ``dtype`` (default: the config's)."""
    source = HFCheckpoint(folder, allow_quantized=True)
    scheme = read_scheme(source.folder, source.config)
    return source if scheme is None else DequantizedCheckpoint(source, scheme, dtype)
