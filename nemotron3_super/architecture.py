"""Nemotron-H / Nemotron 3 Super architecture: the description, its validation and the presets (stdlib only).

Why stdlib only: recipes, listings, CLIs and plugin discovery need shapes, counts and checkpoint
names without paying for torch / transformers / megatron (``import megatron.bridge`` alone takes
about 15 s). Field names follow the HF ``config.json`` keys so conversion code can map 1:1.

Beside it, each in a file named for it: reading/writing config.json (:mod:`nemotron3_super.hf_config`),
the HF tensor layout (:mod:`nemotron3_super.hf_layout`), parameter counts
(:mod:`nemotron3_super.param_counts`) and FLOPs (:mod:`nemotron3_super.flops`). The methods below that
answer with them are one-line delegates, so callers keep one object to ask.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron3_super import hf_layout
from nemotron3_super.hf_config import (COMMON_KEYS, FAMILY_KEYS, SYMBOLS, IncompleteConfigError, arch_error,
                                       check_symbols, check_type, load_json, pattern_to_blocks, read_hf_config, require, write_hf_config)
from nemotron3_super.param_counts import ParamCounts, count_params, layer_params

__all__ = ["SYMBOLS", "IncompleteConfigError", "ParamCounts", "SuperArchitecture", "load_json", "pattern_to_blocks", "PRESETS",
           "super_120b_a12b", "nano_30b_a3b", "tiny_super"]
Shape = hf_layout.Shape


@dataclass(frozen=True, kw_only=True)
class SuperArchitecture:
    """Architecture of a Nemotron-H model (Nemotron 3 Super/Nano): everything that fixes shapes.

    Per-kind fields default to None ("not given"); validation requires them once the backbone or
    MTP pattern uses that kind, so nothing the model needs is ever silently defaulted.
    """

    hidden_size: int
    hybrid_override_pattern: str
    vocab_size: int
    layer_norm_epsilon: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    residual_in_fp32: bool
    # attention (*): no positional encoding, so no rope fields
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    attention_bias: bool | None = None
    # Mamba-2 (M): d_inner = mamba_num_heads * mamba_head_dim
    mamba_num_heads: int | None = None
    mamba_head_dim: int | None = None
    ssm_state_size: int | None = None
    n_groups: int | None = None
    conv_kernel: int | None = None
    chunk_size: int | None = None
    use_conv_bias: bool | None = None
    use_bias: bool | None = None  # in_proj / out_proj bias (also spelled mamba_proj_bias)
    mamba_hidden_act: str | None = None
    # MoE (E): non-gated relu2 experts, sigmoid router, optional latent projections
    n_routed_experts: int | None = None
    num_experts_per_tok: int | None = None
    n_shared_experts: int | None = None
    moe_intermediate_size: int | None = None
    moe_shared_expert_intermediate_size: int | None = None
    moe_latent_size: int | None = None  # None: experts work in hidden_size
    routed_scaling_factor: float | None = None
    n_group: int | None = None
    topk_group: int | None = None
    norm_topk_prob: bool | None = None
    # dense MLP (-); the activation also applies to experts
    intermediate_size: int | None = None
    mlp_hidden_act: str | None = None
    mlp_bias: bool | None = None
    # multi-token prediction
    num_nextn_predict_layers: int = 0
    mtp_hybrid_override_pattern: str = ""

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        pattern, mtp = self.hybrid_override_pattern, self.mtp_hybrid_override_pattern
        check_symbols("hybrid_override_pattern", pattern)
        check_symbols("mtp_hybrid_override_pattern", mtp)
        require(pattern, "hybrid_override_pattern is empty: expected at least one layer")
        n_mtp = self.num_nextn_predict_layers
        require(isinstance(n_mtp, int) and n_mtp >= 0 and (n_mtp > 0) == bool(mtp),
                f"num_nextn_predict_layers={n_mtp!r} with mtp_hybrid_override_pattern={mtp!r}: "
                "expected an integer >= 0, and an MTP pattern exactly when it is > 0")
        for key, kind in COMMON_KEYS.items():
            check_type(key, getattr(self, key), kind)
        used = self.layer_kinds
        for sym, keys in FAMILY_KEYS.items():
            for key, kind in keys.items():
                value = getattr(self, key)
                if value is None and sym in used:
                    raise IncompleteConfigError(f"Nemotron-H architecture: {key} is required because the "
                                                f"pattern has {SYMBOLS[sym]} ({sym!r}) layers, got None")
                if value is not None:
                    check_type(key, value, kind)
        if "*" in used:
            q, kv = self.num_attention_heads, self.num_key_value_heads
            require(q % kv == 0, f"num_attention_heads={q} is not divisible by "
                    f"num_key_value_heads={kv}: expected whole query groups per KV head")
            require(not self.attention_bias, "attention_bias=True: expected False; "
                    "transformers' NemotronH attention has no bias, such weights would not load")
        if "M" in used:
            heads, groups = self.mamba_num_heads, self.n_groups
            require(heads % groups == 0, f"mamba_num_heads={heads} is not divisible by "
                    f"n_groups={groups}: expected whole heads per B/C (and norm) group")
        if "E" in used:
            self._check_moe()

    def _check_moe(self) -> None:
        n, k, h = self.n_routed_experts, self.num_experts_per_tok, self.hidden_size
        require(k <= n, f"num_experts_per_tok={k} is larger than n_routed_experts={n}: "
                "expected top-k <= number of routed experts")
        require(self.n_shared_experts == 1, f"n_shared_experts={self.n_shared_experts}: "
                "expected 1 (NemotronH builds exactly one shared-expert MLP)")
        latent = self.moe_latent_size
        if latent is not None:
            check_type("moe_latent_size", latent, int)
            require(latent <= h, f"moe_latent_size={latent} is larger than hidden_size={h}: "
                    "expected a latent no wider than the model")
        groups, topk_groups = self.n_group, self.topk_group
        require(n % groups == 0 and topk_groups <= groups, f"n_group={groups}, topk_group="
                f"{topk_groups}: expected n_group | n_routed_experts={n}, topk_group <= n_group")
        require(not self.mlp_bias, "mlp_bias=True with MoE layers: expected False; "
                "transformers' NemotronH experts have no bias")

    def validate_parallelism(self, tp: int = 1, ep: int = 1, pp: int = 1, etp: int = 1, *,
                             allow_kv_replication: bool = True) -> None:
        """Raise ValueError if the model cannot be sharded as asked (before any GPU is touched).

        KV heads: tp must divide num_key_value_heads or, with ``allow_kv_replication``, be a
        multiple of it; each KV head is then replicated on tp/kv ranks (Super: kv 2 at TP 4 or 8).
        """
        for name, value in (("tp", tp), ("ep", ep), ("pp", pp), ("etp", etp)):
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"{name}={value!r}: expected a positive integer parallel size")
        used = self.layer_kinds
        checks = {"*": [("num_attention_heads", tp, "tp")],
                  "M": [("mamba_num_heads", tp, "tp"), ("n_groups", tp, "tp")],
                  "E": [("n_routed_experts", ep, "ep"), ("moe_intermediate_size", etp, "etp"),
                        ("moe_shared_expert_intermediate_size", tp, "tp")],
                  "-": [("intermediate_size", tp, "tp")]}
        for sym, rules in checks.items():
            for field, size, name in rules:
                value = getattr(self, field)
                require(sym not in used or value % size == 0, f"{field}={value} is not divisible "
                        f"by {name}={size}: expected an equal share on every rank")
        kv = self.num_key_value_heads
        if "*" in used and kv % tp and not (allow_kv_replication and tp % kv == 0):
            how = " or a multiple of it (KV-head replication)" if allow_kv_replication else ""
            raise arch_error(f"num_key_value_heads={kv} does not fit tp={tp}: expected tp to divide "
                       f"it{how}")
        require(pp <= self.num_hidden_layers, f"pp={pp} exceeds num_hidden_layers="
                f"{self.num_hidden_layers}: expected at least one layer per pipeline stage")

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_hidden_layers(self) -> int:
        return len(self.hybrid_override_pattern)

    @property
    def layer_kinds(self) -> frozenset[str]:
        """Symbols used by the backbone or the MTP block."""
        return frozenset(self.hybrid_override_pattern + self.mtp_hybrid_override_pattern)

    @property
    def attention_q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def attention_kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        """Conv1d channels: x (d_inner) plus B and C (n_groups * ssm_state_size each)."""
        return self.mamba_d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def mamba_in_proj_rows(self) -> int:
        """in_proj output rows: z (d_inner) + xBC (conv_dim) + dt (one per head)."""
        return self.mamba_d_inner + self.mamba_conv_dim + self.mamba_num_heads

    # ------------------------------------------------------------------ HF config I/O
    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any] | object) -> SuperArchitecture:
        """Parse a config.json dict or a config object, in either pattern spelling (see ``hf_config``)."""
        return cls(**read_hf_config(cfg, [f.name for f in dataclasses.fields(cls)]))

    @classmethod
    def from_json_file(cls, path: str | Path) -> SuperArchitecture:
        """Read a config.json; every error names the file."""
        path = Path(path)
        data = load_json(path, "Nemotron-H config file")
        try:
            require(isinstance(data, dict), f"expected a JSON object, got {type(data).__name__}")
            return cls.from_hf_config(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_hf_config_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """config.json keys that load in every transformers 5.x NemotronH (see ``hf_config``)."""
        return write_hf_config(self, extra)

    # ------------------------------------------------------------------ counts and checkpoint names
    def layer_params(self, symbol: str, *, active: bool = False) -> int:
        """Elements of one block incl. its pre-norm (see ``param_counts``)."""
        return layer_params(self, symbol, active=active)

    def param_counts(self) -> ParamCounts:
        """Analytic parameter counts (see ``param_counts``)."""
        return count_params(self)

    def hf_tensors(self) -> Iterator[tuple[str, Shape]]:
        """(name, shape) of every tensor in the released on-disk HF layout (see ``hf_layout``)."""
        return hf_layout.hf_tensors(self)

    def hf_tensor_names(self) -> Iterator[str]:
        """On-disk tensor names (a generator; conversion checks coverage against it)."""
        return (name for name, _ in self.hf_tensors())

    def hf_tensor_count(self) -> int:
        return sum(1 for _ in self.hf_tensors())


# ---------------------------------------------------------------------- presets
@functools.lru_cache(maxsize=None)
def _packaged(filename: str) -> SuperArchitecture:
    """Load a config shipped inside the package (works offline after pip install)."""
    from importlib import resources

    ref = resources.files(__package__ or "nemotron3_super") / "configs" / filename
    try:
        return SuperArchitecture.from_hf_config(json.loads(ref.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise FileNotFoundError(f"packaged config missing: {ref} (package data?)") from None
    except ValueError as exc:
        raise ValueError(f"{ref}: {exc}") from exc


def super_120b_a12b() -> SuperArchitecture:
    """NVIDIA Nemotron 3 Super 120B-A12B, from the released config.json."""
    return _packaged("nemotron-3-super-120b-a12b.json")


def nano_30b_a3b() -> SuperArchitecture:
    """NVIDIA Nemotron 3 Nano 30B-A3B (no latent MoE, no MTP), for contrast and tests."""
    return _packaged("nemotron-3-nano-30b-a3b.json")


def tiny_super() -> SuperArchitecture:
    """Super-shaped debug model (~0.84M params): every block kind Super has, latent MoE and MTP
    `*E`, shardable at TP=2 / EP=2. Only sizes differ from Super."""
    return dataclasses.replace(
        super_120b_a12b(),
        hidden_size=128, hybrid_override_pattern="MEME*ME", vocab_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2,  # d_inner 128
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
        moe_shared_expert_intermediate_size=128, moe_latent_size=64, intermediate_size=64,
    )


PRESETS = {"super_120b_a12b": super_120b_a12b, "nano_30b_a3b": nano_30b_a3b,
           "tiny_super": tiny_super}
