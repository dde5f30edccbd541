"""``convert import`` / ``convert export`` / ``roundtrip`` as Python functions (the CLI calls these).

Single process on CPU (a 1-rank gloo group) by default; ``tp``/``ep`` > 1 run under torchrun (gloo, or NCCL
with ``device="cuda"``: the model shards then live on one GPU per rank).
Everything is validated before work starts; outputs are written to a temporary sibling folder and renamed
at the end, so a failure leaves no half-written output.
Memory: the Megatron model (1x) plus the tensor being converted (import) or one output shard (export).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.conversion.audit import AuditReport, audit
from nemotron3_super.conversion.hf_io import (FP32_SUFFIX, SAFETENSORS_DTYPES, CheckpointError, HFCheckpoint,
                                              ShardedWriter)
from nemotron3_super.conversion.mapping import check_coverage, layer_offset, megatron_tensors, module_of, plan
from nemotron3_super.conversion.megatron_io import (build_model, cpu_current_device, load_checkpoint,
                                                    parallel_group, read_meta, run_provider, save_checkpoint,
                                                    shared_temp_dir)

_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_COPY_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py")  # tokenizer, generation config, chat template


@dataclass
class ConvertReport:
    source: str
    target: str
    tensors: int = 0  # HF tensors read or written
    bytes: int = 0
    seconds: float = 0.0
    kept_wider: list[str] = field(default_factory=list)  # Megatron tensors stored in the HF (wider) dtype

    def render(self, verb: str) -> str:
        rate = self.bytes / max(self.seconds, 1e-9) / 1e9
        return (f"{verb}: {self.source} -> {self.target}: {self.tensors:,} HF tensors, "
                f"{self.bytes / 2**20:,.1f} MiB in {self.seconds:.1f} s ({rate:.2f} GB/s)"
                + (f"; kept in HF dtype: {len(self.kept_wider)}" if self.kept_wider else ""))


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty output unless ``overwrite`` (checked before any work starts)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path}: exists and is not empty (pass --overwrite to replace it)")
    return path


@contextlib.contextmanager
def staged_output(path: Path) -> Iterator[Path]:
    """An empty temporary folder beside ``path`` (the same on every rank); on success it replaces
    ``path``, on error it is removed. Call inside the process group."""
    if dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    tmp = shared_temp_dir(path.parent, f".{path.name}.partial-")
    try:
        yield tmp
        dist.barrier()
    except BaseException:
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dist.get_rank() == 0:
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    dist.barrier()


def _model_dtype(config: dict) -> torch.dtype:
    name = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if name not in _DTYPE_NAMES:
        raise CheckpointError(f"config.json: torch_dtype={name!r}, expected one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def _open_source(hf_model: str | Path) -> HFCheckpoint:
    src = HFCheckpoint(hf_model)
    src.check_quantized()
    if not src.has_weights:
        raise CheckpointError(f"{hf_model}: no *.safetensors files (expected the HF weights)")
    src.check_against(src.arch)
    return src


def import_checkpoint(hf_model: str | Path, megatron_path: str | Path, *, overwrite: bool = False,
                      spec_impl: str = "local", tp: int = 1, ep: int = 1, device: str = "cpu",
                      pp: int = 1) -> ConvertReport:
    """HF folder -> Megatron torch_dist checkpoint. Every tensor keeps its bits: where the Megatron
    parameter is narrower than the HF tensor (e.g. Nano's FP32 router weight) the HF dtype is kept.
    ``tp``/``ep``/``pp`` > 1 run under torchrun (one rank per shard); the checkpoint loads at any layout."""
    start = time.perf_counter()
    src = _open_source(hf_model)
    target_path = check_output(megatron_path, overwrite)
    report = ConvertReport(str(hf_model), str(megatron_path))
    with parallel_group(tp, ep, device, pp), staged_output(target_path) as out, cpu_current_device():
        model = build_model(src.arch, _model_dtype(src.config), spec_impl, device)
        tensors = megatron_tensors(model)
        pairs = plan(tensors, src.arch, offset=layer_offset(model))
        check_coverage(pairs, src.tensors, str(hf_model))
        for pair in pairs:
            converted = pair.mapping.hf_to_megatron(pair.hf_inputs(src.get), module_of(model, pair.local))
            target = tensors[pair.local]
            if converted.shape != target.shape:
                raise CheckpointError(f"{hf_model}: {pair.hf} -> Megatron {pair.megatron} has shape "
                                      f"{list(converted.shape)}, the model expects {list(target.shape)}")
            with torch.no_grad():
                if converted.dtype == target.dtype or torch.equal(converted.to(target.dtype).to(converted.dtype),
                                                                  converted):
                    target.copy_(converted)  # same dtype, or an exact cast (e.g. BF16 A_log -> FP32)
                else:
                    target.data = converted.detach().to(target.device, copy=True)
                    report.kept_wider.append(pair.megatron)
            report.tensors += len(pair.hf)
            report.bytes += sum(src.tensors[h].nbytes for h in pair.hf)
        meta = {"format": 1, "hf_config": src.config, "spec_impl": spec_impl, "source": str(hf_model),
                "tp": tp, "ep": ep, "pp": pp, "hf_dtypes": {n: i.dtype for n, i in src.tensors.items()}}
        save_checkpoint(model, out, meta, run_provider(src.arch, _model_dtype(src.config), spec_impl, tp, ep, pp))
    report.seconds = time.perf_counter() - start
    return report


def _target_dtype(name: str, ref: HFCheckpoint, meta: dict, default: torch.dtype) -> torch.dtype:
    """Export dtype of one HF tensor: FP32 for router correction biases, else the reference checkpoint's,
    else the one recorded at import, else the config's torch_dtype."""
    if name.endswith(FP32_SUFFIX):
        return torch.float32
    if name in ref.tensors:
        return ref.tensors[name].torch_dtype
    recorded = meta.get("hf_dtypes", {}).get(name)
    return SAFETENSORS_DTYPES[recorded] if recorded else default


def export_checkpoint(hf_model: str | Path, megatron_path: str | Path, hf_path: str | Path, *,
                      overwrite: bool = False, shard_bytes: int | None = None, tp: int = 1,
                      ep: int = 1, device: str = "cpu", pp: int = 1, spec_impl: str | None = None) -> ConvertReport:
    """Megatron checkpoint -> HF folder; ``hf_model`` (config, optionally weights) is the reference.
    ``spec_impl`` (default: the one recorded at import) is the layer spec the checkpoint is read into; both
    specs store the same checkpoint keys, so either reads either's checkpoint.
    Any ``tp``/``ep``/``pp`` can read any checkpoint (torch_dist reshards). The host's mappings gather
    TP/EP shards and broadcast across pipeline stages, one tensor at a time; rank 0 writes the files."""
    start = time.perf_counter()
    ref, megatron_path = HFCheckpoint(hf_model), Path(megatron_path)
    meta = read_meta(megatron_path)
    if meta.get("hf_config") and SuperArchitecture.from_hf_config(meta["hf_config"]) != ref.arch:
        raise CheckpointError(f"{megatron_path}: imported from a different architecture than "
                              f"{hf_model}/config.json (compare their config.json files)")
    target_path = check_output(hf_path, overwrite)
    report, dtype = ConvertReport(str(megatron_path), str(hf_path)), _model_dtype(ref.config)
    with parallel_group(tp, ep, device, pp), staged_output(target_path) as out, cpu_current_device():
        model = build_model(ref.arch, dtype, spec_impl or meta.get("spec_impl", "local"), device)
        load_checkpoint(model, megatron_path)
        tensors = megatron_tensors(model)
        pairs = plan(tensors, ref.arch, offset=layer_offset(model))
        check_coverage(pairs, ref.arch.hf_tensor_names(), f"{hf_model}/config.json")
        writer = ShardedWriter(out, **({"shard_bytes": shard_bytes} if shard_bytes else {}))
        writes = dist.get_rank() == 0  # every rank runs every mapping (collectives), rank 0 writes
        with torch.no_grad():
            for pair, local_tensor, module in _export_slots(model, tensors, pairs, ref.arch):
                full = pair.mapping.megatron_to_hf(local_tensor, module)
                for name, t in full.items() if writes else ():
                    writer.add(name, t.to(device="cpu", dtype=_target_dtype(name, ref, meta, dtype)))
                    report.tensors += 1
        if writes:
            writer.close()
            report.bytes = writer.total_bytes
            for extra in ref.folder.iterdir():  # tokenizer and generation files travel with the weights
                if extra.is_file() and extra.suffix in _COPY_SUFFIXES and extra.name not in (
                        "config.json", "model.safetensors.index.json"):
                    shutil.copy2(extra, out / extra.name)
            (out / "config.json").write_text(json.dumps(ref.arch.to_hf_config_dict(ref.config), indent=2) + "\n")
    report.seconds = time.perf_counter() - start
    return report


def _export_slots(model: torch.nn.Module, tensors: dict[str, torch.Tensor], pairs: list, arch: SuperArchitecture):
    """(pair, local tensor or None, module or None) for every tensor of the whole model, in the same order
    on every rank. Without pipeline parallelism these are this rank's pairs. With it, every rank also
    walks the other stages' tensors with ``None``: the host's mappings then broadcast each tensor from
    the stage that owns it (and gather TP/EP shards), so rank 0 ends up with every full tensor. A tensor
    two stages hold (the word embedding, which megatron-core copies onto the MTP stage) is walked once."""
    from megatron.core import parallel_state

    from nemotron3_super.conversion.mapping import Pair, global_name, hf_names, registry_for

    stages = parallel_state.get_pipeline_model_parallel_world_size()
    if stages == 1:
        for pair in pairs:
            yield pair, tensors[pair.local], module_of(model, pair.local)
        return
    stage, offset = parallel_state.get_pipeline_model_parallel_rank(), layer_offset(model)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (stage, offset, [p.local for p in pairs]))
    layout = {st: (off, names) for st, off, names in reversed(everyone)}  # per stage: its first rank's list
    registry, own, seen = registry_for(arch), {p.local: p for p in pairs}, set()
    for st in range(stages):
        off, names = layout[st]
        for local in names:
            key = global_name(local, arch, off, ep_rank=0)  # the same on every rank: skips the shared copy
            if key in seen:
                continue
            seen.add(key)
            if st == stage:
                yield own[local], tensors[local], module_of(model, local)
            else:
                name = global_name(local, arch, off)
                mapping = registry.megatron_to_hf_lookup(name)
                yield Pair(name, mapping, hf_names(mapping), local), None, None


def roundtrip(hf_model: str | Path, megatron_load_path: str | Path | None = None,
              work_dir: str | Path | None = None) -> tuple[AuditReport, list[ConvertReport]]:
    """HF -> Megatron -> HF (or only Megatron -> HF from ``megatron_load_path``), then a bit-exact audit."""
    with tempfile.TemporaryDirectory(prefix="n3s-roundtrip-", dir=work_dir) as tmp:
        steps = []
        if megatron_load_path is None:
            megatron_load_path = Path(tmp) / "megatron"
            steps.append(import_checkpoint(hf_model, megatron_load_path))
        steps.append(export_checkpoint(hf_model, megatron_load_path, Path(tmp) / "hf"))
        return audit(hf_model, Path(tmp) / "hf"), steps
