"""HF checkpoint folders: validated reading (header first, tensors one at a time) and sharded writing.

Reading parses every safetensors header before any tensor is touched, so a wrong architecture, a quantized
checkpoint, a truncated file, a missing / extra / wrongly shaped tensor is reported by name before any
output exists. Tensors are then read one at a time with plain file reads at the header's offsets (peak: the
tensor being read; no memory map keeps converted tensors' pages in this process).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save_file

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.errors import CheckpointError
from nemotron3_super.hf_config import HF_ARCHITECTURE

# Files that travel with the weights when a checkpoint folder is written anew: tokenizer, generation config,
# chat template; remote code (executed by transformers under trust_remote_code) only when asked.
COPY_SUFFIXES = (".json", ".txt", ".model", ".jinja")
REMOTE_CODE_SUFFIXES = (".py",)
HF_NAME_ALIASES = {"backbone.embedding.weight": "backbone.embeddings.weight"}  # transformers 5.12 spelling
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2}
_DTYPE_BITS = {"BF16": 16, "F16": 16, "F32": 32, "F64": 64, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8,
               "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "U16": 16, "U32": 32, "U64": 64}
QUANTIZED_DTYPES = {"U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"}
SCALE_MARKERS = ("weight_scale", "scale_inv", "input_scale", "_amax")
MODEL_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SHARD_BYTES = 5 * 2**30  # 5 GiB per output shard, as transformers writes


@dataclass(frozen=True)
class TensorInfo:
    name: str  # released on-disk spelling (aliases renamed)
    file: Path
    stored_name: str  # name inside the file
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int  # byte offset of the data in the file

    @property
    def torch_dtype(self) -> torch.dtype:
        return SAFETENSORS_DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        n = torch.tensor([], dtype=self.torch_dtype).element_size()
        for d in self.shape:
            n *= d
        return n


def read_config(folder: Path, allow_quantized: bool = False) -> dict[str, Any]:
    """config.json of an HF folder; refuses other architectures and (unless ``allow_quantized``: the
    dequantizing reader in :mod:`.quantized` checks those itself) quantized checkpoints."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (expected an HF checkpoint folder with config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a JSON {type(config).__name__}, expected an object of config fields")
    archs = config.get("architectures")
    if archs != [HF_ARCHITECTURE]:
        raise CheckpointError(f"{path}: architectures={archs!r}, expected [{HF_ARCHITECTURE!r}] "
                              "(this converter handles the Nemotron-H family only)")
    if config.get("quantization_config") and not allow_quantized:
        quant = config["quantization_config"]
        method = (quant.get("quant_algo") or quant.get("quant_method", "?")) if isinstance(quant, dict) else quant
        raise CheckpointError(f"{path}: quantization_config ({method}) present: quantized checkpoints are "
                              "not read here (`convert import` and `roundtrip` dequantize ModelOpt FP8/NVFP4 "
                              "releases; this command needs the BF16 release).")
    return config


def config_dtype(config: dict[str, Any]) -> torch.dtype:
    """The model dtype config.json names (``torch_dtype``, or transformers 5's ``dtype``; default BF16)."""
    name = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if not isinstance(name, str) or name not in MODEL_DTYPES:
        raise CheckpointError(f"config.json: torch_dtype={name!r}, expected one of {sorted(MODEL_DTYPES)}")
    return MODEL_DTYPES[name]


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors header and where its data starts, with the file's size checked against it
    (truncated files are named)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, expected an object)")
    header.pop("__metadata__", None)
    end = check_layout(path, header)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file: tensors need {8 + n + end} bytes, "
                              f"the file has {size}")
    if 8 + n + end < size:
        raise CheckpointError(f"{path}: {size - 8 - n - end} bytes after the last tensor that no header entry "
                              "covers (expected the tensors to fill the file)")
    return header, 8 + n


def check_layout(path: Path, header: dict[str, Any]) -> int:
    """Every entry's dtype known, its byte range the size of its shape, and the ranges tiling the data
    area from 0 without gap or overlap (as the safetensors library requires: an aliased tensor would
    otherwise be read as another tensor's bytes). Returns the data area's size in bytes."""
    spans = []
    for name, meta in header.items():
        if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= meta.keys():
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {meta!r}")
        dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
        width = _DTYPE_BITS.get(dtype)
        if width is None:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which this converter does not "
                                  f"know (known: {', '.join(sorted(_DTYPE_BITS))})")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r}: corrupt shape {shape!r} or data_offsets {offsets!r}")
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != (count * width + 7) // 8 or offsets[0] < 0:
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype}{shape}) has data_offsets {offsets}, "
                                  f"expected a range of {(count * width + 7) // 8} bytes")
        spans.append((offsets[0], offsets[1], name))
    problems, position = [], 0
    for begin, stop, name in sorted(spans):  # overlaps (aliased tensors) are named before gaps
        if begin != position:
            problems.append((begin > position, f"tensor {name!r} starts at byte {begin} and " + (
                "overlaps the previous tensor" if begin < position else f"leaves a gap of {begin - position} bytes")
                + f" (expected {position})"))
        position = max(position, stop)
    if problems:
        raise CheckpointError(f"{path}: {min(problems)[1]}: the header's offsets must tile the data without "
                              "overlap or gap")
    return position


class HFCheckpoint:
    """An HF Nemotron-H folder: config, architecture and a name -> TensorInfo index (no tensor data)."""

    def __init__(self, folder: str | Path, allow_quantized: bool = False) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: not a directory (expected an HF checkpoint folder)")
        self.config = read_config(self.folder, allow_quantized)
        try:
            self.arch = SuperArchitecture.from_hf_config(self.config)
        except ValueError as exc:
            raise CheckpointError(f"{self.folder / 'config.json'}: {exc}") from exc
        self.tensors: dict[str, TensorInfo] = {}
        for file in sorted(self.folder.glob("*.safetensors")):
            header, data_start = read_header(file)
            for stored, meta in header.items():
                name = HF_NAME_ALIASES.get(stored, stored)
                if name in self.tensors:
                    raise CheckpointError(f"{file}: tensor {stored!r} is also in {self.tensors[name].file.name} "
                                          f"(as {self.tensors[name].stored_name!r}): expected it once")
                self.tensors[name] = TensorInfo(name, file, stored, meta["dtype"], tuple(meta["shape"]),
                                                data_start + meta["data_offsets"][0])

    @property
    def has_weights(self) -> bool:
        return bool(self.tensors)

    def check_quantized(self) -> None:
        """Refuse quantized weights (uint8 / float8 payloads, scale tensors) even without quantization_config."""
        payload = [i for i in self.tensors.values() if i.dtype in QUANTIZED_DTYPES]  # name the weight first
        scales = [i for i in self.tensors.values() if any(m in i.name for m in SCALE_MARKERS)]
        if payload or scales:
            info = (payload + scales)[0]
            raise CheckpointError(
                f"{info.file}: tensor {info.name!r} is {info.dtype}{list(info.shape)}: a quantized "
                "(NVFP4/FP8) checkpoint. Its weights need their per-block scales to dequantize and do not "
                "have BF16 shapes; convert the BF16 release instead.")

    def check_against(self, arch: SuperArchitecture) -> None:
        """Every expected tensor present with its shape, nothing else (all problems in one message)."""
        expected = dict(arch.hf_tensors())
        problems = [f"missing tensor {n!r} (expected shape {list(s)})" for n, s in expected.items()
                    if n not in self.tensors]
        problems += [f"unexpected tensor {n!r} in {i.file.name}" for n, i in self.tensors.items() if n not in expected]
        problems += [f"tensor {n!r} in {i.file.name} has shape {list(i.shape)}, expected {list(expected[n])}"
                     for n, i in self.tensors.items() if n in expected and i.shape != tuple(expected[n])]
        if problems:
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise CheckpointError(f"{self.folder}: {len(problems)} tensor problem(s) against config.json: "
                                  + "; ".join(problems[:20]) + more)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from disk now into its own memory (its stored dtype). Plain reads, not a
        memory map: pages of tensors already converted do not stay mapped into this process."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.folder}: tensor {name!r} not found")
        return self.read(info)

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The stored tensor ``info`` describes, as stored."""
        name = info.name
        buf = bytearray(info.nbytes)
        with info.file.open("rb", buffering=0) as fh:
            fh.seek(info.offset)
            if fh.readinto(buf) != info.nbytes:
                raise CheckpointError(f"{info.file}: tensor {name!r} is cut short (file changed while reading?)")
        if not buf:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        return torch.frombuffer(buf, dtype=info.torch_dtype).reshape(info.shape)

    def names(self) -> list[str]:
        """Tensor names (the :class:`~nemotron3_super.conversion.streaming.TensorSource` interface)."""
        return list(self.tensors)

    def dtype(self, name: str) -> torch.dtype:
        return self.tensors[name].torch_dtype

    def nbytes(self, name: str) -> int:
        return self.tensors[name].nbytes

    def dtypes(self) -> dict[str, torch.dtype]:
        return {n: i.torch_dtype for n, i in self.tensors.items()}


class ShardedWriter:
    """Writes tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards of at most ``shard_bytes`` (peak: one shard)."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.folder, self.shard_bytes = folder, shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._files):
            raise CheckpointError(f"export wrote tensor {name!r} twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        tmp = f"shard-{len(self._files):05d}.safetensors"
        save_file(self._pending, str(self.folder / tmp), metadata={"format": "pt"})
        self._files.append((tmp, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Flush, give shards their final names and write the index; returns the file names."""
        if self._pending or not self._files:
            self._flush()
        count, weight_map, names = len(self._files), {}, []
        for i, (tmp, tensors) in enumerate(self._files):
            final = "model.safetensors" if count == 1 else f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.folder / tmp).rename(self.folder / final)
            weight_map.update({t: final for t in tensors})
            names.append(final)
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


def iter_tensors(ckpt: HFCheckpoint, names: Mapping[str, Any] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time, in file order (sequential reads)."""
    for info in sorted(ckpt.tensors.values(), key=lambda i: (i.file.name, i.name)):
        if names is None or info.name in names:
            yield info.name, ckpt.get(info.name)
