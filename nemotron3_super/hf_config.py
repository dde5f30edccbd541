"""The HF ``config.json`` of a Nemotron-H model: its keys, their types and other spellings, and reading /
writing it (stdlib only).

Why apart from :mod:`nemotron3_super.architecture`: that module describes and validates the model; this
one knows how transformers spells it (pattern strings or block-type lists, aliases, which keys each
transformers version accepts). It works on plain dicts, so it imports nothing of this package and the
architecture builds on it.

Layer pattern symbols: ``M`` Mamba-2, ``E`` MoE, ``*`` attention, ``-`` dense MLP.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HF_ARCHITECTURE = "NemotronHForCausalLM"  # config.json "architectures"; the bridge's source class
MODEL_TYPE = "nemotron_h"
SYMBOLS = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}
# transformers >= 5 list spelling -> symbol (older and newer names of the same block).
_BLOCK_TO_SYMBOL = {"mamba": "M", "linear_attention": "M", "moe": "E", "attention": "*",
                    "full_attention": "*", "mlp": "-"}
# Keys (with their type) that each layer kind needs: required once a pattern uses the kind.
FAMILY_KEYS: dict[str, dict[str, type]] = {
    "M": {"mamba_num_heads": int, "mamba_head_dim": int, "ssm_state_size": int, "n_groups": int,
          "conv_kernel": int, "chunk_size": int, "use_conv_bias": bool, "use_bias": bool,
          "mamba_hidden_act": str},
    "*": {"num_attention_heads": int, "num_key_value_heads": int, "head_dim": int,
          "attention_bias": bool},
    "E": {"n_routed_experts": int, "num_experts_per_tok": int, "n_shared_experts": int,
          "moe_intermediate_size": int, "moe_shared_expert_intermediate_size": int,
          "routed_scaling_factor": float, "n_group": int, "topk_group": int,
          "norm_topk_prob": bool, "mlp_hidden_act": str, "mlp_bias": bool},
    "-": {"intermediate_size": int, "mlp_hidden_act": str, "mlp_bias": bool},
}
COMMON_KEYS = {"hidden_size": int, "vocab_size": int, "layer_norm_epsilon": float,
                "max_position_embeddings": int, "tie_word_embeddings": bool,
                "residual_in_fp32": bool}
# Other spellings of the same key (transformers' NemotronHConfig kwargs; vLLM's mamba_proj_bias).
# attention_head_dim: the remote-code-era Nemotron-H configs (Nemotron-H 8B/47B/56B, Nano v2).
ALIASES = {"head_dim": ("attention_head_dim",), "n_groups": ("mamba_n_groups",), "conv_kernel": ("mamba_d_conv",),
            "chunk_size": ("mamba_chunk_size",), "use_conv_bias": ("mamba_conv_bias",),
            "use_bias": ("mamba_proj_bias",)}
PATTERN_KEYS = {"hybrid_override_pattern", "mtp_hybrid_override_pattern",
                 "num_nextn_predict_layers"}
_MISSING = object()


def arch_error(msg: str) -> ValueError:
    """The error every architecture check raises (a ValueError naming the field and what was expected)."""
    return ValueError(f"Nemotron-H architecture: {msg}")


class IncompleteConfigError(ValueError):
    """The config leaves out (or sets to None) a key the model needs: it does not describe a whole model."""


def require(ok: Any, msg: str) -> None:
    """Raise :func:`arch_error` ``(msg)`` unless ``ok``."""
    if not ok:
        raise arch_error(msg)


def check_type(name: str, value: Any, kind: type) -> None:
    """``value`` of key ``name`` is a ``kind``; sizes and scales must also be positive."""
    if kind is bool:
        require(isinstance(value, bool), f"{name}={value!r}: expected a bool")
    elif kind is str:
        require(isinstance(value, str), f"{name}={value!r}: expected a string")
    else:  # sizes and scales must be positive
        number = isinstance(value, kind if kind is int else (int, float))
        require(number and not isinstance(value, bool) and value > 0,
                f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'} > 0")


def check_symbols(field: str, pattern: Any) -> None:
    """``pattern`` is a string of known layer symbols."""
    require(isinstance(pattern, str), f"{field}={pattern!r}: expected a string of layer symbols")
    for pos, sym in enumerate(pattern):
        require(sym in SYMBOLS, f"{field} has unknown layer symbol {sym!r} at position {pos} "
                f"(expected one of {', '.join(repr(s) for s in SYMBOLS)})")


def _blocks_to_pattern(field: str, blocks: Any) -> str:
    require(isinstance(blocks, (list, tuple)),
            f"{field}={blocks!r}: expected a list of block-type names")
    for pos, name in enumerate(blocks):
        require(name in _BLOCK_TO_SYMBOL, f"{field} has unknown block type {name!r} at position "
                f"{pos} (expected one of {sorted(_BLOCK_TO_SYMBOL)})")
    return "".join(_BLOCK_TO_SYMBOL[name] for name in blocks)


def load_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing file or bad JSON raises an error naming ``what`` and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def pattern_to_blocks(pattern: str) -> list[str]:
    """Pattern string -> ``layers_block_type`` list, in the names transformers 5.12 accepts."""
    check_symbols("pattern", pattern)
    return [SYMBOLS[s] for s in pattern]


def _read_pattern(get: Any, str_key: str, list_key: str, required: bool) -> str:
    """Read a pattern given as a string, a transformers-5 list, or both (which must agree)."""
    text, blocks = get(str_key, None), get(list_key, None)
    if text is not None:
        check_symbols(str_key, text)
    if blocks is not None:
        from_list = _blocks_to_pattern(list_key, blocks)
        require(text is None or from_list == text,
                f"{str_key}={text!r} disagrees with {list_key} (= {from_list!r})")
        text = from_list
    if text is None and required:
        raise IncompleteConfigError(f"Nemotron-H architecture: config is missing required key {str_key!r} "
                                    f"(or {list_key!r})")
    return text or ""


def mtp_block_pattern(cfg: Mapping[str, Any] | object | None) -> str:
    """The MTP block's layer pattern ("" without MTP) from a config or a partial one (None: no config),
    in either spelling; raises IncompleteConfigError when MTP is on but its pattern is missing."""
    def get(key: str, default: Any = None) -> Any:
        value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
        return default if value is None else value

    return _read_pattern(get, "mtp_hybrid_override_pattern", "mtp_layers_block_type", True) \
        if cfg is not None and get("num_nextn_predict_layers", 0) else ""


def read_hf_config(cfg: Mapping[str, Any] | object, fields: Iterable[str]) -> dict[str, Any]:
    """The architecture's field values from a config.json dict or a config object, in either pattern
    spelling (``fields``: the architecture's field names, which are HF keys).

    Never falls back to transformers' NemotronHConfig defaults: they differ from Super.
    """
    def get(key: str, default: Any = _MISSING) -> Any:
        names = (key, *ALIASES.get(key, ()))
        if isinstance(cfg, Mapping):
            found = {n: cfg[n] for n in names if n in cfg}
        else:
            found = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
        values = list(found.values())
        require(all(v == values[0] for v in values),
                f"config spells {key!r} several ways with different values: {found}")
        return values[0] if values else default

    model_type = get("model_type", None)
    require(model_type in (None, MODEL_TYPE), f"model_type={model_type!r}: expected {MODEL_TYPE!r}")
    pattern = _read_pattern(get, "hybrid_override_pattern", "layers_block_type", True)
    n_mtp = get("num_nextn_predict_layers", 0)  # an absent key means: no MTP
    mtp = _read_pattern(get, "mtp_hybrid_override_pattern", "mtp_layers_block_type", bool(n_mtp))
    mtp = mtp if n_mtp else ""  # transformers 5 keeps a default MTP list even without MTP
    n_layers = get("num_hidden_layers", None)
    require(n_layers is None or n_layers == len(pattern), f"num_hidden_layers={n_layers} "
            f"but hybrid_override_pattern has {len(pattern)} layers: expected them to agree")
    required = set(COMMON_KEYS).union(*(FAMILY_KEYS[s] for s in set(pattern + mtp)))
    values: dict[str, Any] = {"hybrid_override_pattern": pattern, "mtp_hybrid_override_pattern": mtp,
                              "num_nextn_predict_layers": n_mtp}
    for name in fields:
        if name not in PATTERN_KEYS:
            value = get(name)
            if value is _MISSING and name in required:
                raise IncompleteConfigError(f"Nemotron-H architecture: config is missing required key {name!r} "
                                            f"(pattern {pattern!r}, MTP pattern {mtp!r})")
            if value is not _MISSING:
                values[name] = value
    return values


def write_hf_config(arch: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json keys for architecture ``arch`` (a dataclass whose fields are HF keys) that load in
    every transformers 5.x NemotronH.

    The layer and MTP patterns are written as strings (``hybrid_override_pattern`` /
    ``mtp_hybrid_override_pattern``), which each version turns into its own block-type list; the
    lists are left out (also from ``extra``): transformers 5.12 accepts only "mamba"/"attention"
    there and 5.17 only "linear_attention"/"full_attention". ``extra`` carries non-architecture
    keys (token ids, dtype, ...); architecture keys win.
    """
    stale = ("layers_block_type", "mtp_layers_block_type", "mtp_hybrid_override_pattern")
    out: dict[str, Any] = {k: v for k, v in (extra or {}).items() if k not in stale}
    out.update(architectures=[HF_ARCHITECTURE], model_type=MODEL_TYPE,
               num_hidden_layers=len(arch.hybrid_override_pattern))
    uses_moe = "E" in arch.hybrid_override_pattern + arch.mtp_hybrid_override_pattern
    for field in dataclasses.fields(arch):
        value = getattr(arch, field.name)
        if value is not None or (field.name == "moe_latent_size" and uses_moe):
            out[field.name] = value
    if arch.use_bias is not None:
        out["mamba_proj_bias"] = arch.use_bias
    if not arch.num_nextn_predict_layers:
        out.pop("mtp_hybrid_override_pattern", None)
    return out
