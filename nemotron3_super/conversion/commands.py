"""``convert import`` / ``convert export`` / ``roundtrip`` as Python functions (the CLI calls these).

Single process on CPU (a 1-rank gloo group) by default; ``tp``/``ep`` > 1 run under torchrun (gloo, or NCCL
with ``device="cuda"``: the model shards then live on one GPU per rank).
Everything is validated before work starts; outputs are written to a temporary sibling folder and renamed
at the end, so a failure leaves no half-written output.
Memory does not grow with the model: the Megatron model is built on the meta device and tensors are
streamed through it (``streaming.py``): import holds the tensor being converted, export a group of loaded
tensors plus the output shard being filled.
"""

from __future__ import annotations

import json
import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.bridge.pairing import check_coverage, layer_offset, megatron_tensors, module_of, plan
from nemotron3_super.conversion.audit import AuditReport, audit
from nemotron3_super.conversion.hf_io import (COPY_SUFFIXES, REMOTE_CODE_SUFFIXES, SAFETENSORS_DTYPES, CheckpointError,
                                              HFCheckpoint, ShardedWriter, config_dtype)
from nemotron3_super.conversion.megatron_io import (ITERATION_DIR, build_model, check_data_files, checkpoint_root,
                                                    read_meta, run_provider, save_checkpoint)
from nemotron3_super.conversion.outputs import check_output, shared_temp_dir, staged_output
from nemotron3_super.conversion.process_groups import cpu_current_device, parallel_group
from nemotron3_super.conversion.progress import Progress
from nemotron3_super.conversion.quantized import QUANT_CONFIG_FILE, DequantizedCheckpoint, open_checkpoint
from nemotron3_super.conversion.streaming import RealModules, StreamingLoader, StreamingSaveStrategy, TensorSource
from nemotron3_super.hf_layout import FP32_HF_SUFFIX


@dataclass
class ConvertReport:
    source: str
    target: str
    tensors: int = 0  # HF tensors read or written
    bytes: int = 0
    seconds: float = 0.0
    kept_wider: list[str] = field(default_factory=list)  # Megatron tensors stored in the HF (wider) dtype
    notes: list[str] = field(default_factory=list)  # e.g. stale partial outputs of earlier runs removed
    dequantized: str = ""  # a quantized source: what was dequantized (DequantSummary.render)

    def render(self, verb: str) -> str:
        rate = self.bytes / max(self.seconds, 1e-9) / 1e9
        return (f"{verb}: {self.source} -> {self.target}: {self.tensors:,} HF tensors, "
                f"{self.bytes / 2**20:,.1f} MiB in {self.seconds:.1f} s ({rate:.2f} GB/s)"
                + (f"; kept in HF dtype: {len(self.kept_wider)}" if self.kept_wider else "")
                + (f"\n  {self.dequantized}" if self.dequantized else "")
                + "".join(f"\nnote: {n}" for n in self.notes))


def _open_source(hf_model: str | Path, dtype: torch.dtype | None = None) -> HFCheckpoint:
    """The import's source, validated (a quantized one through the dequantizing reader, to ``dtype``): the
    :class:`TensorSource` import reads."""
    src = open_checkpoint(hf_model, dtype)
    src.check_quantized()
    if not src.has_weights:
        raise CheckpointError(f"{hf_model}: no *.safetensors files (expected the HF weights)")
    src.check_against(src.arch)
    if getattr(src, "quantization_config", None) is None:  # a dequantized source has the dtype it is given
        _check_config_dtype(src)
    return src


def _meta_model(arch: SuperArchitecture, dtype: torch.dtype, spec_impl: str) -> torch.nn.Module:
    """The conversion model on the meta device: structure, shapes and dtypes, no memory (see streaming.py)."""
    with torch.device("meta"):
        return build_model(arch, dtype, spec_impl, "cpu")


def _compute_device(device: str) -> torch.device:
    """Where tensors live while converted: this rank's GPU with ``device="cuda"`` (NCCL collectives)."""
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")


def _convert_pair(pair: Any, model: torch.nn.Module, target: torch.Tensor, src: TensorSource,
                  where: str, real: RealModules) -> torch.Tensor:
    """HF tensor(s) of ``pair`` -> the Megatron tensor's values, checked against its shape."""
    module = real.of(module_of(model, pair.local), pair.local.rsplit(".", 1)[0])
    converted = pair.mapping.hf_to_megatron(pair.hf_inputs(lambda n: src.get(n).to(real.device)), module)
    if converted.shape != target.shape:
        raise CheckpointError(f"{where}: {pair.hf} -> Megatron {pair.megatron} has shape "
                              f"{list(converted.shape)}, the model expects {list(target.shape)}")
    return converted


def _widen(model: torch.nn.Module, tensors: dict[str, torch.Tensor], pairs: list, src: TensorSource,
           where: str, real: RealModules) -> list[str]:
    """Megatron tensors whose HF values do not fit the model dtype exactly (e.g. Nano's FP32 router weight)
    take the HF dtype, before the checkpoint is planned. Only pairs with an input wider than the model
    tensor, or as wide in another format, can lose bits; those (few, small) are converted once here to find out."""
    widened = []
    for pair in pairs:
        target = tensors[pair.local]
        if all(d == target.dtype or d.itemsize < target.dtype.itemsize for d in map(src.dtype, pair.hf)):
            continue  # an exact cast (a same-width other format, FP16 in a BF16 model, is not: checked below)
        converted = _convert_pair(pair, model, target, src, where, real)
        if not torch.equal(converted.to(target.dtype).to(converted.dtype), converted):
            target.data = torch.empty(target.shape, dtype=converted.dtype, device="meta")
            widened.append(pair.megatron)
    return widened


def _exact_cast(values: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``values`` in ``dtype``, refusing any cast that changes a bit."""
    cast = values.to(dtype)
    if not torch.equal(cast.to(values.dtype), values):
        raise CheckpointError(f"{what}: {values.dtype} values do not fit {dtype} exactly")
    return cast


def _check_config_dtype(src: HFCheckpoint) -> None:
    """A config whose torch_dtype is one 16-bit float format while every 16-bit tensor is the other would
    build the Megatron model in a format no weight has: refused up front."""
    wanted = config_dtype(src.config)
    halves = {i.torch_dtype for i in src.tensors.values() if i.torch_dtype in (torch.float16, torch.bfloat16)}
    if wanted in (torch.float16, torch.bfloat16) and halves and wanted not in halves:
        example = next(i for i in src.tensors.values() if i.torch_dtype in halves)
        raise CheckpointError(f"{src.folder / 'config.json'}: torch_dtype={str(wanted).removeprefix('torch.')} but "
                              f"the 16-bit tensors are {example.dtype} (e.g. {example.name!r} in "
                              f"{example.file.name}): fix torch_dtype in config.json")


def import_checkpoint(hf_model: str | Path, megatron_path: str | Path, *, overwrite: bool = False,
                      spec_impl: str = "local", tp: int = 1, ep: int = 1, device: str = "cpu",
                      pp: int = 1, dtype: torch.dtype | None = None, quiet: bool = True) -> ConvertReport:
    """HF folder -> Megatron torch_dist checkpoint. Every tensor keeps its bits: where the Megatron
    parameter is narrower than the HF tensor (e.g. Nano's FP32 router weight) the HF dtype is kept.
    ``tp``/``ep``/``pp`` > 1 run under torchrun (one rank per shard); the checkpoint loads at any layout.
    ``dtype``: the model's (default: the config's). A ModelOpt FP8 / NVFP4 checkpoint is dequantized to it.
    Streaming: the model is on the meta device and each tensor is converted, written and freed in turn
    (peak memory: a few tensors, whatever the model size; see ``streaming.py``). ``quiet=False``: progress."""
    start = time.perf_counter()
    src = _open_source(hf_model, dtype)
    dtype = dtype or config_dtype(src.config)
    target_path = check_output(megatron_path, overwrite, [("--hf-model", hf_model)])
    report = ConvertReport(str(hf_model), str(megatron_path))
    with parallel_group(tp, ep, device, pp), staged_output(target_path, report.notes, command="convert import",
                                                           source=str(hf_model)) as out, cpu_current_device():
        model, real = _meta_model(src.arch, dtype, spec_impl), RealModules(_compute_device(device))
        tensors = megatron_tensors(model)
        pairs = plan(tensors, src.arch, offset=layer_offset(model))
        check_coverage(pairs, src.names(), str(hf_model))
        report.kept_wider = _widen(model, tensors, pairs, src, str(hf_model), real)

        def produce(write: Callable[[str, torch.Tensor], None]) -> None:
            with Progress("import", sum(src.nbytes(h) for p in pairs for h in p.hf),
                          sum(len(p.hf) for p in pairs), quiet=quiet) as bar, torch.no_grad():
                for pair in pairs:
                    target = tensors[pair.local]  # stays on the meta device: values go straight to the file
                    values = _convert_pair(pair, model, target, src, str(hf_model), real)
                    if values.dtype != target.dtype:  # e.g. BF16 A_log -> FP32; _widen left only exact casts
                        values = _exact_cast(values, target.dtype, f"{hf_model}: {pair.hf} -> {pair.megatron}")
                    write(pair.local, values.cpu())
                    del values
                    nbytes = sum(src.nbytes(h) for h in pair.hf)
                    report.tensors, report.bytes = report.tensors + len(pair.hf), report.bytes + nbytes
                    bar.update(nbytes, len(pair.hf))

        meta = {"format": 1, "hf_config": src.config, "spec_impl": spec_impl, "source": str(hf_model),
                "tp": tp, "ep": ep, "pp": pp, "hf_dtypes": {n: i.dtype for n, i in src.tensors.items()}}
        if isinstance(src, DequantizedCheckpoint):
            meta["dequantized"], report.dequantized = src.summary.as_dict(), src.summary.render()
        save_checkpoint(model, out, meta, run_provider(src.arch, dtype, spec_impl, tp, ep, pp),
                        strategy=StreamingSaveStrategy(tensors, produce))
    report.seconds = time.perf_counter() - start
    return report


def _target_dtype(name: str, ref: HFCheckpoint, meta: dict, default: torch.dtype) -> torch.dtype:
    """Export dtype of one HF tensor: FP32 for router correction biases, else the reference checkpoint's,
    else the one recorded at import, else the config's torch_dtype."""
    if name.endswith(FP32_HF_SUFFIX):
        return torch.float32
    if name in ref.tensors:
        return ref.tensors[name].torch_dtype
    recorded = meta.get("hf_dtypes", {}).get(name)
    return SAFETENSORS_DTYPES[recorded] if recorded else default


def export_checkpoint(hf_model: str | Path, megatron_path: str | Path, hf_path: str | Path, *,
                      overwrite: bool = False, shard_bytes: int | None = None, tp: int = 1,
                      ep: int = 1, device: str = "cpu", pp: int = 1, spec_impl: str | None = None,
                      copy_remote_code: bool = False, quiet: bool = True,
                      group_bytes: int | None = None) -> ConvertReport:
    """Megatron checkpoint -> HF folder; ``hf_model`` (config, optionally weights) is the reference.
    ``spec_impl`` (default: the one recorded at import) is the layer spec the checkpoint is read into; both
    specs store the same checkpoint keys, so either reads either's checkpoint.
    Its tokenizer / generation files travel along; its remote code (``*.py``, ``auto_map``) only with
    ``copy_remote_code``, so an export does not pass on code nobody asked for.
    Any ``tp``/``ep``/``pp`` can read any checkpoint (torch_dist reshards). The host's mappings gather
    TP/EP shards and broadcast across pipeline stages, one tensor at a time; rank 0 writes the files.
    Streaming: tensors are read from the checkpoint a group at a time (``group_bytes``, default 256 MiB or
    a quarter of an output shard) for a meta-device model."""
    start = time.perf_counter()
    ref, megatron_path = open_checkpoint(hf_model), checkpoint_root(Path(megatron_path))  # quantized ref: BF16 view
    meta = read_meta(megatron_path)
    if meta.get("hf_config") and SuperArchitecture.from_hf_config(meta["hf_config"]) != ref.arch:
        raise CheckpointError(f"{megatron_path}: imported from a different architecture than "
                              f"{hf_model}/config.json (compare their config.json files)")
    check_data_files(megatron_path)  # a missing or truncated .distcp is named before any work
    target_path = check_output(hf_path, overwrite, [("--hf-model", hf_model), ("--megatron-path", megatron_path)])
    report, dtype = ConvertReport(str(megatron_path), str(hf_path)), config_dtype(ref.config)
    with parallel_group(tp, ep, device, pp), staged_output(target_path, report.notes, command="convert export",
                                                           source=str(megatron_path)) as out, cpu_current_device():
        model = _meta_model(ref.arch, dtype, spec_impl or meta.get("spec_impl", "local"))
        on = _compute_device(device)
        real = RealModules(on)
        tensors = megatron_tensors(model)
        pairs = plan(tensors, ref.arch, offset=layer_offset(model))
        check_coverage(pairs, ref.arch.hf_tensor_names(), f"{hf_model}/config.json")
        writer = ShardedWriter(out, **({"shard_bytes": shard_bytes} if shard_bytes else {}))
        # loaded tensors: 256 MiB or a quarter of an output shard at a time (or one larger tensor)
        loader = StreamingLoader(tensors, model.sharded_state_dict(), megatron_path / ITERATION_DIR,
                                 [p.local for p in pairs], device=on,
                                 group_bytes=group_bytes or min(2**28, writer.shard_bytes // 4))
        writes = dist.get_rank() == 0  # every rank runs every mapping (collectives), rank 0 writes
        targets = {n: _target_dtype(n, ref, meta, dtype) for n in ref.arch.hf_tensor_names()}
        total = sum(math.prod(s) * targets[n].itemsize for n, s in ref.arch.hf_tensors())
        with Progress("export", total, len(targets), quiet=quiet) as bar, torch.no_grad(), \
                contextlib.closing(loader):
            for pair, local_tensor, module in _export_slots(model, tensors, pairs, ref.arch):
                if local_tensor is not None:  # this rank's tensor (else another stage's: a broadcast peer)
                    local_tensor = loader.ensure(pair.local)
                    module = real.of(module, pair.local.rsplit(".", 1)[0], loader.loaded.get)
                full = pair.mapping.megatron_to_hf(local_tensor, module)
                for name, t in full.items() if writes else ():
                    t = t.to(device="cpu", dtype=targets[name])
                    writer.add(name, t)
                    report.tensors += 1
                    bar.update(t.numel() * t.element_size())
                del full
        if writes:
            writer.close()
            report.bytes = writer.total_bytes
            report.notes += _copy_companions(ref, out, copy_remote_code)
    report.seconds = time.perf_counter() - start
    return report


def _copy_companions(ref: HFCheckpoint, out: Path, copy_remote_code: bool) -> list[str]:
    """Tokenizer and generation files next to the weights, and config.json; returns notes on what
    remote code was left out."""
    left_out = []
    for extra in sorted(ref.folder.iterdir()):
        if not extra.is_file() or extra.name in ("config.json", "model.safetensors.index.json", QUANT_CONFIG_FILE):
            continue
        if extra.suffix in REMOTE_CODE_SUFFIXES and not copy_remote_code:
            left_out.append(extra.name)
        elif extra.suffix in COPY_SUFFIXES or extra.suffix in REMOTE_CODE_SUFFIXES:
            shutil.copy2(extra, out / extra.name)
            if extra.suffix == ".json" and not copy_remote_code:
                left_out += _drop_auto_map(out / extra.name)
    config = ref.arch.to_hf_config_dict(ref.config)
    if "auto_map" in config and not copy_remote_code:
        del config["auto_map"]
        left_out.append("config.json auto_map")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return [f"remote code not copied (pass --copy-remote-code to copy it): {', '.join(left_out)}"] if left_out else []


def _drop_auto_map(path: Path) -> list[str]:
    """Remove ``auto_map`` (which points transformers at remote code) from a copied JSON file."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(data, dict) or "auto_map" not in data:
        return []
    del data["auto_map"]
    path.write_text(json.dumps(data, indent=2) + "\n")
    return [f"{path.name} auto_map"]


def _export_slots(model: torch.nn.Module, tensors: dict[str, torch.Tensor], pairs: list, arch: SuperArchitecture):
    """(pair, local tensor or None, module or None) for every tensor of the whole model, in the same order
    on every rank. Without pipeline parallelism these are this rank's pairs. With it, every rank also
    walks the other stages' tensors with ``None``: the host's mappings then broadcast each tensor from
    the stage that owns it (and gather TP/EP shards), so rank 0 ends up with every full tensor. A tensor
    two stages hold (the word embedding, which megatron-core copies onto the MTP stage) is walked once."""
    from megatron.core import parallel_state

    from nemotron3_super.bridge.pairing import Pair, global_name, hf_names, registry_for

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
              work_dir: str | Path | None = None, *, tp: int = 1, ep: int = 1, pp: int = 1,
              device: str = "cpu") -> tuple[AuditReport, list[ConvertReport]]:
    """HF -> Megatron -> HF (or only Megatron -> HF from ``megatron_load_path``), then a bit-exact audit.

    Under torchrun the conversions run split at ``tp``/``ep``/``pp`` over the ranks; the intermediate
    folders are one temporary folder shared by every rank (made by rank 0, removed by it at the end), rank 0
    audits, and every rank returns rank 0's report."""
    with parallel_group(tp, ep, device, pp):
        tmp = shared_temp_dir(Path(work_dir or tempfile.gettempdir()), "n3s-roundtrip-")
        try:
            steps = []
            if megatron_load_path is None:
                megatron_load_path = tmp / "megatron"
                steps.append(import_checkpoint(hf_model, megatron_load_path, tp=tp, ep=ep, pp=pp, device=device))
            steps.append(export_checkpoint(hf_model, megatron_load_path, tmp / "hf", tp=tp, ep=ep, pp=pp,
                                           device=device))
            result = [audit(hf_model, tmp / "hf") if dist.get_rank() == 0 else None]
            if dist.get_world_size() > 1:
                dist.broadcast_object_list(result, src=0)
            return result[0], steps
        finally:
            dist.barrier()
            if dist.get_rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # made above by this rank, for this run only
