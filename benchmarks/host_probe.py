"""The host's own Nemotron-H model for train_step.py: asked for "as shipped" first, then step by step towards
what megatron-core 0.19.2 builds without Transformer Engine; every attempt and its exact error is recorded."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from train_step_models import (BUILD_MECHANICS, Run, error_record, free_cuda, ours_provider, provide,
                               shape_summary)

from nemotron3_super.architecture import SuperArchitecture


@dataclass(frozen=True)
class HostVariant:
    """One way of asking the host for the model, from "as shipped" towards what builds without TE."""

    label: str
    te_free_settings: bool  # harmonised_settings() applied (fusions off, local attention, same dispatcher, ...)
    spec: str  # "default": the provider's own spec choice (TE); "local": megatron-core's local-module spec
    torch_norm: bool = False  # that spec's TE-backed Norm replaced by megatron-core's torch RMSNorm
    latent: bool = True  # keep LatentMoE (moe_latent_size)
    final_norm: bool = True  # keep HybridStack's final norm (megatron-core builds it with TENorm)


HOST_VARIANTS = (
    HostVariant("as shipped: NemotronHBridge.provider_bridge(config) and its default hybrid spec (TE)",
                te_free_settings=False, spec="default"),
    HostVariant("TE-free settings, the provider's default hybrid spec (TE)", te_free_settings=True, spec="default"),
    HostVariant("TE-free settings + megatron-core's local-module hybrid spec "
                "(get_hybrid_stack_modelopt_spec(local_core_attention=True))", te_free_settings=True, spec="local"),
    HostVariant("... with that spec's TE-backed Norm -> megatron-core's WrappedTorchNorm (torch RMSNorm)",
                te_free_settings=True, spec="local", torch_norm=True),
    HostVariant("... and HybridStack(post_layer_norm=False) through the spec's params (no final norm)",
                te_free_settings=True, spec="local", torch_norm=True, final_norm=False),
    HostVariant("... final norm kept, latent MoE off (moe_latent_size=None)", te_free_settings=True, spec="local",
                torch_norm=True, latent=False),
    HostVariant("... final norm off and latent MoE off", te_free_settings=True, spec="local", torch_norm=True,
                latent=False, final_norm=False),
)


def host_local_spec(torch_norm: bool, final_norm: bool) -> Any:
    """megatron-core's own local-module hybrid stack spec (the ModelOpt one; megatron-core 0.19.2 has no
    other TE-free hybrid spec), optionally with its ``Norm`` (TE-only) swapped for megatron-core's torch
    norm and the stack's final norm switched off through the spec's params."""
    from megatron.core.post_training.modelopt.hybrid.model_specs import get_hybrid_stack_modelopt_spec
    from megatron.core.post_training.modelopt.layers import Norm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    spec = copy.deepcopy(get_hybrid_stack_modelopt_spec(local_core_attention=True))
    seen: set[int] = set()

    def swap_norms(node: Any) -> None:  # every `Norm` field of the nested ModuleSpec / submodules dataclasses
        if id(node) in seen or node is None or isinstance(node, (str, int, float, bool, type)):
            return
        seen.add(id(node))
        if isinstance(node, (list, tuple)):
            for item in node:
                swap_norms(item)
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if value is Norm:
                    setattr(node, f.name, WrappedTorchNorm)
                else:
                    swap_norms(value)

    if torch_norm:
        swap_norms(spec)
    if not final_norm:
        spec.params = {**spec.params, "post_layer_norm": False}
    return spec


def harmonised_settings(run: Run, arch: SuperArchitecture, mem_eff: bool, init: bool) -> dict[str, Any]:
    """Settings given to the host provider so both models run the same way without TE/apex."""
    from megatron.core.transformer.enums import AttnBackend

    from nemotron3_super.provider import LOCAL_SPEC_OFF

    out: dict[str, Any] = {name: False for name in LOCAL_SPEC_OFF}  # need TE or apex kernels
    out.update(sequence_parallel=False,
               moe_shared_expert_overlap=False,  # ours: megatron refuses it with latent MoE in training
               attention_backend=AttnBackend.local, transformer_impl="local",
               moe_token_dispatcher_type=run.dispatcher, use_mamba_mem_eff_path=mem_eff)
    if arch.mtp_hybrid_override_pattern:
        out["mtp_num_layers"] = run.mtp_depths  # host: num_nextn_predict_layers (1) depths; ours: 2
    out.update(use_cpu_initialization=not run.cuda, perform_initialization=init)
    return out


def host_provider(arch: SuperArchitecture, run: Run, variant: HostVariant, mem_eff: bool,
                  init: bool = True) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """The host's own Nemotron-H provider for ``arch``'s HF config, asked for as ``variant`` says.
    Returns (finalized provider, {setting: (host default, value used)})."""
    import types

    from megatron.bridge.models.nemotronh.nemotron_h_bridge import NemotronHBridge
    from megatron.core.process_groups_config import ProcessGroupCollection
    from transformers import NemotronHConfig

    if not variant.latent:
        arch = dataclasses.replace(arch, moe_latent_size=None)
    config = NemotronHConfig(**arch.to_hf_config_dict({"dtype": "bfloat16"}))
    provider = NemotronHBridge().provider_bridge(types.SimpleNamespace(config=config))
    changed: dict[str, tuple[Any, Any]] = {}
    settings = (harmonised_settings(run, arch, mem_eff, init) if variant.te_free_settings else
                {"use_cpu_initialization": not run.cuda, "perform_initialization": init})
    for name, value in settings.items():
        changed[name] = (getattr(provider, name), value)
        setattr(provider, name, value)
    if variant.spec == "local":
        provider.hybrid_stack_spec = host_local_spec(variant.torch_norm, variant.final_norm)
    provider.finalize()
    # as the host's provide_distributed_model does: megatron-core's global groups
    provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    return provider, changed


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """megatron-core writes NVTE_* attention flags into os.environ at build; a failed probe must not leak them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class HostPlan:
    """What the host builds: every variant tried, and the first TE-free one that built."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    variant: HostVariant | None = None
    arch: SuperArchitecture | None = None
    provider: Any = None  # finalized provider of the chosen variant (for the settings / differences)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    params: int | None = None

    def differences(self, full: SuperArchitecture) -> list[str]:
        """How the host's model differs from the full benchmark shape (empty: it is the full shape)."""
        out = []
        if self.variant and not self.variant.final_norm:
            out.append("no final norm before the LM head (megatron-core builds it only as TENorm)")
        if self.arch and self.arch.moe_latent_size != full.moe_latent_size:
            out.append(f"no LatentMoE: routed experts work in hidden {full.hidden_size} instead of latent "
                       f"{full.moe_latent_size} (megatron-core's MoELayer asserts TE for the latent projections)")
        return out


def probe_host(full: SuperArchitecture, run: Run) -> HostPlan:
    """Ask the host for the model in each HOST_VARIANTS way (weights not initialised) until a TE-free
    variant builds; record each outcome with its exact error."""
    plan, tried = HostPlan(), set()
    for variant in HOST_VARIANTS:
        latent = variant.latent and bool(full.moe_latent_size)
        key = (variant.te_free_settings, variant.spec, variant.torch_norm, latent, variant.final_norm)
        if key in tried:  # e.g. "latent off" when the shape has no latent MoE anyway
            continue
        tried.add(key)
        record: dict[str, Any] = {"variant": variant.label, "latent_moe": latent,
                                  "final_norm": variant.final_norm}
        provider = model = None
        with restored_environ():
            try:
                provider, changed = host_provider(full, run, variant, mem_eff=False, init=False)
                model = provide(provider, run)
                record.update(outcome="built", params=sum(p.numel() for p in model.parameters()))
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                record.update(outcome="failed", **error_record(exc))
        plan.attempts.append(record)
        del model
        free_cuda()
        if record["outcome"] == "built" and variant.spec == "local":  # TE-free, like ours
            plan.variant, plan.provider, plan.changed = variant, provider, changed
            plan.arch = full if latent else dataclasses.replace(full, moe_latent_size=None)
            plan.params = record["params"]
            break
    return plan


def config_differences(ours: Any, host: Any) -> dict[str, tuple[str, str]]:
    """Model-config fields (after finalize) where the two providers still differ."""
    import functools

    skip = {"hybrid_stack_spec", "_pg_collection", "hf_model_id", "hf_model_revision"}

    def show(value: Any) -> str:
        if isinstance(value, functools.partial):
            return f"partial({getattr(value.func, '__name__', value.func)}, {value.keywords})"
        if callable(value) and hasattr(value, "__qualname__"):
            return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
        return repr(value)

    out = {}
    for f in dataclasses.fields(host):
        if f.name in skip or not hasattr(ours, f.name):
            continue
        a, b = getattr(ours, f.name), getattr(host, f.name)
        with contextlib.suppress(Exception):
            if bool(a == b):  # 10000 == 10000.0
                continue
        if show(a) != show(b):
            out[f.name] = (show(a), show(b))
    return out


def print_host_plan(plan: HostPlan, full: SuperArchitecture) -> None:
    print("\nHost built-in path (NemotronHBridge provider + megatron-core modules), tried in this order:")
    for i, a in enumerate(plan.attempts, 1):
        print(f"  {i}. {a['variant']}\n     -> {a['outcome']}" +
              (f": {a['error']}\n        raised at {a['raised_at']}" if a["outcome"] == "failed"
               else f" ({a['params'] / 1e9:.3f} B params)"))
    if plan.variant is None:
        print("  => the host builds no TE-free variant of this model: host rows skipped")
        return
    diffs = plan.differences(full)
    print("  => host row: variant " + repr(plan.variant.label) +
          ("\n     differs from the full shape: " + "; ".join(diffs) if diffs else " (full shape)"))


def describe_host(host: HostPlan, full: SuperArchitecture, run: Run) -> dict[str, Any]:
    """Print the settings the host provider was given and what still differs from ours; return them."""
    out: dict[str, Any] = {"host_attempts": host.attempts,
                           "host_variant": host.variant.label if host.variant else None}
    if not host.variant:
        return out
    ours_ref = ours_provider(host.arch, run, mem_eff=False, init=False)
    settings = {name: {"host_default": old, "used": new, "ours": getattr(ours_ref, name)}
                for name, (old, new) in host.changed.items() if name not in BUILD_MECHANICS}
    settings["use_mamba_mem_eff_path"].update(used="per row (mamba path column)", ours="per row")
    diffs = config_differences(ours_ref, host.provider)
    if not host.variant.final_norm:
        diffs["final norm (HybridStack)"] = ("RMSNorm", "none")
    print("\nSettings applied to the host provider (host default -> used; ours):")
    for name, value in settings.items():
        print(f"  {name}: {value['host_default']} -> {value['used']}; ours {value['ours']}")
    print("Other differences between the providers at the host-buildable shape (ours vs host):")
    for name, (a, b) in diffs.items():
        print(f"  {name}: ours {a}, host {b}")
    out.update(host_settings=settings, config_differences=diffs, host_shape_differences=host.differences(full),
               shape_host=shape_summary(host.arch, run.mtp_depths), hf_config_host=host.arch.to_hf_config_dict())
    return out
