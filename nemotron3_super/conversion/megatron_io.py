"""Megatron side of conversion on CPU: model build, torch_dist checkpoint save / load (process groups and
the device helpers: :mod:`nemotron3_super.conversion.process_groups`).

Checkpoint layout (megatron-core dist checkpoint, as Megatron-Bridge's import writes it)::

    <path>/latest_checkpointed_iteration.txt   "0"
    <path>/iter_0000000/                        torch_dist: {"model": model.sharded_state_dict()}
    <path>/nemotron3_super.json                 HF config.json dict, layer spec, HF dtype per tensor
    <path>/iter_0000000/run_config.yaml         as the host writes it: the model provider, checkpoint flags
    <path>/iter_0000000/train_state.pt          the host's TrainState at step 0 (also latest_train_state.pt)

megatron-core's torch_dist *save* stages tensors with a CUDA synchronize and broadcasts its failure flag
through a CUDA tensor, so it fails on a machine without a GPU driver. :class:`CpuTorchDistSaveStrategy`
is the same strategy with those two steps done on CPU (a subclass with ``host_compat.cuda_on_cpu.cpu_save_callbacks``; the
host's own saves get the same from the ``cpu_torch_dist_save`` host fix, only where there is no CUDA).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.conversion.process_groups import cpu_current_device
from nemotron3_super.host_compat.cuda_on_cpu import cpu_save_callbacks

ITERATION_DIR = "iter_0000000"
META_FILE = "nemotron3_super.json"


def _provider_fields(arch: SuperArchitecture, dtype: torch.dtype, tp: int = 1, ep: int = 1,
                     pp: int = 1) -> dict[str, Any]:
    """Layout and precision of a provider at TP/EP/PP (the conversion model and ``run_config.yaml``'s).
    MoE at TP > 1 needs sequence parallelism; an uneven pipeline split gives the first stage the remainder."""
    fields = {"tensor_model_parallel_size": tp, "sequence_parallel": tp > 1, "expert_model_parallel_size": ep,
              "pipeline_model_parallel_size": pp, "params_dtype": dtype, "bf16": dtype == torch.bfloat16,
              "fp16": dtype == torch.float16}
    n = arch.num_hidden_layers
    if pp > 1 and n % pp:
        fields["num_layers_in_first_pipeline_stage"] = n - (pp - 1) * (n // pp)
    return fields


def build_model(arch: SuperArchitecture, dtype: torch.dtype, spec_impl: str = "local", device: str = "cpu",
                **overrides: Any) -> torch.nn.Module:
    """The provider's HybridModel on ``device`` ("cpu", or "cuda": this rank's current GPU) with
    uninitialised weights (conversion overwrites every one)."""
    from megatron.core.tensor_parallel import random as mp_random

    from nemotron3_super.provider import SuperModelProvider

    sizes = (parallel_state.get_tensor_model_parallel_world_size(),  # shard as the parallel state says
             parallel_state.get_expert_model_parallel_world_size(),
             parallel_state.get_pipeline_model_parallel_world_size()
             ) if parallel_state.model_parallel_is_initialized() else ()
    overrides = {**_provider_fields(arch, dtype, *sizes), **overrides}
    if overrides.get("pipeline_model_parallel_size", 1) > 1 and device == "cpu":
        # the MTP stage's copy of the word embedding is all-reduced from the first stage at build, through
        # .cuda(); this flag's one effect on the local spec is to skip that (conversion fills both copies)
        overrides.setdefault("init_model_with_meta_device", True)
    provider = SuperModelProvider.from_architecture(
        arch, spec_impl=spec_impl, use_cpu_initialization=device == "cpu", perform_initialization=False,
        moe_token_dispatcher_type="allgather",  # alltoall allocates a CUDA stream at build; same weights
        **overrides)
    provider.finalize()
    # nothing is initialised randomly here: megatron's inference tracker makes its RNG fork() a no-op (CPU or GPU)
    mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    with cpu_current_device():
        model = provider.provide()
    return model.eval()


class CpuTorchDistSaveStrategy(TorchDistSaveShardedStrategy):
    """torch_dist save that runs without a GPU (``host_compat.cuda_on_cpu.cpu_save_callbacks``). Same files, same format."""

    _get_save_and_finalize_callbacks = cpu_save_callbacks


@contextlib.contextmanager
def one_line_checkpoint_errors(folder: Path) -> Iterator[None]:
    """torch's ``CheckpointException`` (a ``BaseException`` whose text is every rank's traceback) becomes a
    ``RuntimeError`` of one line naming ``folder`` and the first cause (e.g. no space left)."""
    from nemotron3_super.failures import describe, is_checkpoint_exception

    try:
        yield
    except BaseException as exc:
        if is_checkpoint_exception(exc):
            raise RuntimeError(describe(exc, folder)) from None
        raise


@contextlib.contextmanager
def in_process_write_results() -> Iterator[None]:
    """The checkpoint writer reports its results through a queue that megatron-core, by default, creates
    with a *spawned* ``multiprocessing.Manager`` (plus the resource tracker spawn starts): two helper
    processes that outlive a SIGKILLed conversion, and whose start re-runs a calling script that lacks
    ``if __name__ == "__main__"``. Our save is synchronous (the writer runs in this process), so a plain
    thread-safe queue carries the same results with no helper process. Restored on exit."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    previous = filesystem_async._results_queue
    filesystem_async._results_queue = queue.Queue()
    try:
        yield
    finally:
        filesystem_async._results_queue = previous


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict[str, Any], provider: Any = None,
                    strategy: Any = None) -> None:
    """Write ``model`` as a torch_dist checkpoint under ``path`` (which must exist and be empty).

    With ``provider`` (the model's config as a training run would use it), the checkpoint also carries what
    Megatron-Bridge's loaders read (``run_config.yaml``), so ``checkpoint.pretrained_checkpoint`` and the
    host's ``load_megatron_model`` accept it. ``strategy``: the torch_dist save strategy (default: the
    in-memory model's; conversion passes a streaming one, see ``conversion/streaming.py``)."""
    ckpt_dir = path / ITERATION_DIR
    if dist.get_rank() == 0:
        ckpt_dir.mkdir()
    dist.barrier()
    strategy = strategy or CpuTorchDistSaveStrategy("torch_dist", 1)  # the model is on CPU here, GPU or not
    # checkpoint_version 3.0 and iteration 0 go to common.pt as in the host's checkpoints (an absent
    # version reads as 0 there, a legacy layout)
    with in_process_write_results(), one_line_checkpoint_errors(ckpt_dir):
        dist_checkpointing.save({"model": model.sharded_state_dict(), "checkpoint_version": 3.0, "iteration": 0},
                                str(ckpt_dir), sharded_strategy=strategy, async_sharded_save=False)
    if dist.get_rank() == 0:
        if provider is not None:
            _write_host_files(path, provider)
        (path / "latest_checkpointed_iteration.txt").write_text("0\n")
        (path / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    dist.barrier()


def _write_host_files(path: Path, provider: Any) -> None:
    """``run_config.yaml`` as the host writes it, reduced to what its loaders read: the model section (the
    provider, serialised by the host's own config code, so ``load_megatron_model`` rebuilds it) and the
    checkpoint flags (no optimizer or RNG state here). The host's full ``ConfigContainer`` is not used:
    importing it pulls in every data module (megatron-energon), which conversion must not need.
    ``train_state.pt`` (+ ``latest_train_state.pt``): the host's TrainState at step 0, field for field (the
    host rejects a legacy tracker that says 0, so its loaders need this file)."""
    import yaml
    from megatron.bridge.training.utils.config_utils import _ConfigContainerBase
    from megatron.training.config.yaml_utils import safe_yaml_representers

    run_config = {"model": _ConfigContainerBase._convert_value_to_dict(provider),
                  "checkpoint": {"save_optim": False, "save_rng": False, "fully_parallel_save": False,
                                 "ckpt_format": "torch_dist"}}
    with safe_yaml_representers(), open(path / ITERATION_DIR / "run_config.yaml", "w") as fh:
        yaml.safe_dump(run_config, fh, default_flow_style=False)
    zero = {"step": torch.tensor(0, dtype=torch.int64), "consumed_train_samples": torch.tensor(0, dtype=torch.int64),
            "skipped_train_samples": torch.tensor(0, dtype=torch.int64),
            "consumed_valid_samples": torch.tensor(0, dtype=torch.int64),
            "floating_point_operations_so_far": torch.tensor(0.0, dtype=torch.float64),
            "do_train": torch.tensor(False), "do_valid": torch.tensor(False), "do_test": torch.tensor(False)}
    torch.save(zero, path / ITERATION_DIR / "train_state.pt")
    torch.save(zero, path / "latest_train_state.pt")


def run_provider(arch: SuperArchitecture, dtype: torch.dtype, spec_impl: str, tp: int = 1, ep: int = 1,
                 pp: int = 1) -> Any:
    """The provider a training run of this checkpoint would build (no conversion-only settings), for
    ``run_config.yaml``."""
    from nemotron3_super.provider import SuperModelProvider

    return SuperModelProvider.from_architecture(arch, spec_impl=spec_impl, **_provider_fields(arch, dtype, tp, ep, pp))


def checkpoint_root(path: Path) -> Path:
    """The checkpoint folder for ``path`` given as the folder or as its ``iter_0000000/`` (the host's tools
    and the upstream page use the latter)."""
    if path.name == ITERATION_DIR and not (path / ITERATION_DIR).is_dir() and (path.parent / ITERATION_DIR).is_dir():
        return path.parent
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """Our metadata file of a checkpoint written by ``convert import`` (names the problem when absent)."""
    meta_path = path / META_FILE
    if not (path / ITERATION_DIR).is_dir():
        raise FileNotFoundError(f"{path}: no {ITERATION_DIR}/ (expected a checkpoint written by "
                                "`nemotron3-super convert import`)")
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path}: corrupt ({exc}); expected the JSON `convert import` writes "
                         "(re-run the import)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: a JSON {type(meta).__name__}, expected an object (re-run the import)")
    return meta


def checkpoint_dtypes(path: Path) -> dict[str, torch.dtype]:
    """Stored dtype of every sharded tensor key (from the checkpoint metadata, no data read)."""
    return {k: v.dtype for k, v in dist_checkpointing.load_tensors_metadata(str(path / ITERATION_DIR)).items()
            if hasattr(v, "dtype")}


def check_data_files(path: Path) -> None:
    """Every ``.distcp`` file the checkpoint's metadata refers to exists and is long enough."""
    from torch.distributed.checkpoint import FileSystemReader

    folder = path / ITERATION_DIR
    try:
        storage = FileSystemReader(str(folder)).read_metadata().storage_data
    except Exception as exc:  # noqa: BLE001 - named in one line
        raise ValueError(f"{folder}/.metadata: cannot read the checkpoint's metadata ({type(exc).__name__}: "
                         f"{exc})") from None
    need: dict[str, int] = {}
    for info in storage.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file}: missing (the checkpoint's metadata lists it; copy the whole checkpoint)")
        if file.stat().st_size < size:
            raise ValueError(f"{file}: truncated ({file.stat().st_size} bytes, the checkpoint's metadata needs "
                             f"{size})")


def load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load a torch_dist checkpoint into ``model``; parameters stored wider than the model keeps them
    (e.g. Nano's FP32 router weight), or in another format of the same width (an FP16 tensor of a BF16
    checkpoint), get the stored dtype first, so nothing is rounded. The data files are checked against
    the checkpoint's metadata first, so a missing or truncated ``.distcp`` is named."""
    check_data_files(path)
    stored = checkpoint_dtypes(path)
    params = {id(t): (n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    sharded = model.sharded_state_dict()
    for sh in sharded.values():
        data = getattr(sh, "data", None)
        key = getattr(sh, "key", None)
        if data is None or key not in stored or id(data) not in params:
            continue
        if stored[key] == data.dtype or stored[key].itemsize < data.dtype.itemsize:  # the cast is exact
            continue  # (a same-width other format, e.g. FP16 in a BF16 model, would round: kept as stored)
        params[id(data)][1].data = torch.empty_like(data, dtype=stored[key])
    with one_line_checkpoint_errors(path / ITERATION_DIR):
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path / ITERATION_DIR),
                                        strict="raise_all")
    result = model.load_state_dict(state["model"], strict=False)
    missing_keys = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: checkpoint does not match the model: missing {missing_keys[:10]}, "
                         f"unexpected {result.unexpected_keys[:10]}")
