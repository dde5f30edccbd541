"""Nemotron-H / Nemotron 3 Super architecture, described with the standard library only.

Why stdlib only: recipes, listings, CLIs and plugin discovery need shapes, counts and checkpoint
names without paying for torch / transformers / megatron (``import megatron.bridge`` alone takes
about 15 s). Field names follow the HF ``config.json`` keys so conversion code can map 1:1.

Layer pattern symbols: ``M`` Mamba-2, ``E`` MoE, ``*`` attention, ``-`` dense MLP.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYMBOLS = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}
# transformers >= 5 list spelling -> symbol (older and newer names of the same block).
_BLOCK_TO_SYMBOL = {"mamba": "M", "linear_attention": "M", "moe": "E", "attention": "*",
                    "full_attention": "*", "mlp": "-"}
# Keys (with their type) that each layer kind needs: required once a pattern uses the kind.
_FAMILY_KEYS: dict[str, dict[str, type]] = {
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
_COMMON_KEYS = {"hidden_size": int, "vocab_size": int, "layer_norm_epsilon": float,
                "max_position_embeddings": int, "tie_word_embeddings": bool,
                "residual_in_fp32": bool}
# Other spellings of the same key (transformers' NemotronHConfig kwargs; vLLM's mamba_proj_bias).
# attention_head_dim: the remote-code-era Nemotron-H configs (Nemotron-H 8B/47B/56B, Nano v2).
_ALIASES = {"head_dim": ("attention_head_dim",), "n_groups": ("mamba_n_groups",), "conv_kernel": ("mamba_d_conv",),
            "chunk_size": ("mamba_chunk_size",), "use_conv_bias": ("mamba_conv_bias",),
            "use_bias": ("mamba_proj_bias",)}
_PATTERN_KEYS = {"hybrid_override_pattern", "mtp_hybrid_override_pattern",
                 "num_nextn_predict_layers"}
_MISSING = object()
Shape = tuple[int, ...]


class IncompleteConfigError(ValueError):
    """The config leaves out (or sets to None) a key the model needs: it does not describe a whole model."""


def _err(msg: str) -> ValueError:
    return ValueError(f"Nemotron-H architecture: {msg}")


def _require(ok: Any, msg: str) -> None:
    if not ok:
        raise _err(msg)


def _check_type(name: str, value: Any, kind: type) -> None:
    if kind is bool:
        _require(isinstance(value, bool), f"{name}={value!r}: expected a bool")
    elif kind is str:
        _require(isinstance(value, str), f"{name}={value!r}: expected a string")
    else:  # sizes and scales must be positive
        number = isinstance(value, kind if kind is int else (int, float))
        _require(number and not isinstance(value, bool) and value > 0,
                 f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'} > 0")


def _check_symbols(field: str, pattern: Any) -> None:
    _require(isinstance(pattern, str), f"{field}={pattern!r}: expected a string of layer symbols")
    for pos, sym in enumerate(pattern):
        _require(sym in SYMBOLS, f"{field} has unknown layer symbol {sym!r} at position {pos} "
                 f"(expected one of {', '.join(repr(s) for s in SYMBOLS)})")


def _blocks_to_pattern(field: str, blocks: Any) -> str:
    _require(isinstance(blocks, (list, tuple)),
             f"{field}={blocks!r}: expected a list of block-type names")
    for pos, name in enumerate(blocks):
        _require(name in _BLOCK_TO_SYMBOL, f"{field} has unknown block type {name!r} at position "
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
    _check_symbols("pattern", pattern)
    return [SYMBOLS[s] for s in pattern]


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts in elements (HF layout; Megatron's layout holds the same number)."""

    total: int  # backbone + mtp
    backbone: int  # embeddings + layers + norm_f + lm_head
    mtp: int  # multi-token-prediction block(s); the HF forward does not use them
    active: int  # backbone elements one token touches (see SuperArchitecture.param_counts)
    mtp_active: int  # same rule applied to the MTP block
    embedding: int
    lm_head: int  # 0 when tied


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
        _check_symbols("hybrid_override_pattern", pattern)
        _check_symbols("mtp_hybrid_override_pattern", mtp)
        _require(pattern, "hybrid_override_pattern is empty: expected at least one layer")
        n_mtp = self.num_nextn_predict_layers
        _require(isinstance(n_mtp, int) and n_mtp >= 0 and (n_mtp > 0) == bool(mtp),
                 f"num_nextn_predict_layers={n_mtp!r} with mtp_hybrid_override_pattern={mtp!r}: "
                 "expected an integer >= 0, and an MTP pattern exactly when it is > 0")
        for key, kind in _COMMON_KEYS.items():
            _check_type(key, getattr(self, key), kind)
        used = self.layer_kinds
        for sym, keys in _FAMILY_KEYS.items():
            for key, kind in keys.items():
                value = getattr(self, key)
                if value is None and sym in used:
                    raise IncompleteConfigError(f"Nemotron-H architecture: {key} is required because the "
                                                f"pattern has {SYMBOLS[sym]} ({sym!r}) layers, got None")
                if value is not None:
                    _check_type(key, value, kind)
        if "*" in used:
            q, kv = self.num_attention_heads, self.num_key_value_heads
            _require(q % kv == 0, f"num_attention_heads={q} is not divisible by "
                     f"num_key_value_heads={kv}: expected whole query groups per KV head")
            _require(not self.attention_bias, "attention_bias=True: expected False; "
                     "transformers' NemotronH attention has no bias, such weights would not load")
        if "M" in used:
            heads, groups = self.mamba_num_heads, self.n_groups
            _require(heads % groups == 0, f"mamba_num_heads={heads} is not divisible by "
                     f"n_groups={groups}: expected whole heads per B/C (and norm) group")
        if "E" in used:
            self._check_moe()

    def _check_moe(self) -> None:
        n, k, h = self.n_routed_experts, self.num_experts_per_tok, self.hidden_size
        _require(k <= n, f"num_experts_per_tok={k} is larger than n_routed_experts={n}: "
                 "expected top-k <= number of routed experts")
        _require(self.n_shared_experts == 1, f"n_shared_experts={self.n_shared_experts}: "
                 "expected 1 (NemotronH builds exactly one shared-expert MLP)")
        latent = self.moe_latent_size
        if latent is not None:
            _check_type("moe_latent_size", latent, int)
            _require(latent <= h, f"moe_latent_size={latent} is larger than hidden_size={h}: "
                     "expected a latent no wider than the model")
        groups, topk_groups = self.n_group, self.topk_group
        _require(n % groups == 0 and topk_groups <= groups, f"n_group={groups}, topk_group="
                 f"{topk_groups}: expected n_group | n_routed_experts={n}, topk_group <= n_group")
        _require(not self.mlp_bias, "mlp_bias=True with MoE layers: expected False; "
                 "transformers' NemotronH experts have no bias")

    def validate_parallelism(self, tp: int = 1, ep: int = 1, pp: int = 1, etp: int = 1, *,
                             allow_kv_replication: bool = True) -> None:
        """Raise ValueError if the model cannot be sharded as asked (before any GPU is touched).

        KV heads: tp must divide num_key_value_heads or, with ``allow_kv_replication``, be a
        multiple of it; each KV head is then replicated on tp/kv ranks (Super: kv 2 at TP 4 or 8).
        """
        for name, value in (("tp", tp), ("ep", ep), ("pp", pp), ("etp", etp)):
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
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
                _require(sym not in used or value % size == 0, f"{field}={value} is not divisible "
                         f"by {name}={size}: expected an equal share on every rank")
        kv = self.num_key_value_heads
        if "*" in used and kv % tp and not (allow_kv_replication and tp % kv == 0):
            how = " or a multiple of it (KV-head replication)" if allow_kv_replication else ""
            raise _err(f"num_key_value_heads={kv} does not fit tp={tp}: expected tp to divide "
                       f"it{how}")
        _require(pp <= self.num_hidden_layers, f"pp={pp} exceeds num_hidden_layers="
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
        """Parse a config.json dict or a config object, in either pattern spelling.

        Never falls back to transformers' NemotronHConfig defaults: they differ from Super.
        """
        def get(key: str, default: Any = _MISSING) -> Any:
            names = (key, *_ALIASES.get(key, ()))
            if isinstance(cfg, Mapping):
                found = {n: cfg[n] for n in names if n in cfg}
            else:
                found = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
            values = list(found.values())
            _require(all(v == values[0] for v in values),
                     f"config spells {key!r} several ways with different values: {found}")
            return values[0] if values else default

        model_type = get("model_type", None)
        _require(model_type in (None, "nemotron_h"),
                 f"model_type={model_type!r}: expected 'nemotron_h'")
        pattern = _read_pattern(get, "hybrid_override_pattern", "layers_block_type", True)
        n_mtp = get("num_nextn_predict_layers", 0)  # an absent key means: no MTP
        mtp = _read_pattern(get, "mtp_hybrid_override_pattern", "mtp_layers_block_type",
                            bool(n_mtp))
        mtp = mtp if n_mtp else ""  # transformers 5 keeps a default MTP list even without MTP
        n_layers = get("num_hidden_layers", None)
        _require(n_layers is None or n_layers == len(pattern), f"num_hidden_layers={n_layers} "
                 f"but hybrid_override_pattern has {len(pattern)} layers: expected them to agree")
        required = set(_COMMON_KEYS).union(*(_FAMILY_KEYS[s] for s in set(pattern + mtp)))
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in _PATTERN_KEYS:
                value = get(field.name)
                if value is _MISSING and field.name in required:
                    raise IncompleteConfigError(f"Nemotron-H architecture: config is missing required key "
                                                f"{field.name!r} (pattern {pattern!r}, MTP pattern {mtp!r})")
                if value is not _MISSING:
                    values[field.name] = value
        return cls(hybrid_override_pattern=pattern, mtp_hybrid_override_pattern=mtp,
                   num_nextn_predict_layers=n_mtp, **values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> SuperArchitecture:
        """Read a config.json; every error names the file."""
        path = Path(path)
        data = load_json(path, "Nemotron-H config file")
        try:
            _require(isinstance(data, dict), f"expected a JSON object, got {type(data).__name__}")
            return cls.from_hf_config(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_hf_config_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """config.json keys that load in every transformers 5.x NemotronH.

        The layer and MTP patterns are written as strings (``hybrid_override_pattern`` /
        ``mtp_hybrid_override_pattern``), which each version turns into its own block-type list; the
        lists are left out (also from ``extra``): transformers 5.12 accepts only "mamba"/"attention"
        there and 5.17 only "linear_attention"/"full_attention". ``extra`` carries non-architecture
        keys (token ids, dtype, ...); architecture keys win.
        """
        stale = ("layers_block_type", "mtp_layers_block_type", "mtp_hybrid_override_pattern")
        out: dict[str, Any] = {k: v for k, v in (extra or {}).items() if k not in stale}
        out.update(architectures=["NemotronHForCausalLM"], model_type="nemotron_h",
                   num_hidden_layers=self.num_hidden_layers)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None or (field.name == "moe_latent_size" and "E" in self.layer_kinds):
                out[field.name] = value
        if self.use_bias is not None:
            out["mamba_proj_bias"] = self.use_bias
        if not self.num_nextn_predict_layers:
            out.pop("mtp_hybrid_override_pattern", None)
        return out

    # ------------------------------------------------------------------ parameters
    def layer_params(self, symbol: str, *, active: bool = False) -> int:
        """Elements of one block incl. its pre-norm; ``active`` keeps only top-k routed experts."""
        h = self.hidden_size
        if symbol == "M":
            bias = int(bool(self.use_bias))
            conv = self.mamba_conv_dim * (self.conv_kernel + int(bool(self.use_conv_bias)))
            return (h + (h + bias) * self.mamba_in_proj_rows + conv
                    + 3 * self.mamba_num_heads  # A_log, D, dt_bias
                    + self.mamba_d_inner  # grouped RMSNorm weight
                    + (self.mamba_d_inner + bias) * h)  # out_proj
        if symbol == "*":
            q, kv = self.attention_q_dim, self.attention_kv_dim
            return h + h * (q + 2 * kv) + q * h
        if symbol == "-":
            inter = self.intermediate_size
            return h + 2 * h * inter + int(bool(self.mlp_bias)) * (inter + h)
        if symbol == "E":
            n, latent = self.n_routed_experts, self.moe_latent_size or 0
            picked = self.num_experts_per_tok if active else n
            return (h + n * h + n  # norm, router weight, e_score_correction_bias
                    + picked * 2 * self.moe_intermediate_size * (latent or h)  # up + down
                    + 2 * h * self.moe_shared_expert_intermediate_size
                    + 2 * h * latent)  # fc1/fc2_latent_proj
        raise _err(f"unknown layer symbol {symbol!r}")

    def param_counts(self) -> ParamCounts:
        """Analytic counts. ``active`` = every backbone element except the routed experts a token
        does not pick: embeddings, lm_head, norms, Mamba, attention, router + correction bias,
        shared expert, latent projections and the top-k routed experts. MTP: ``mtp_active``."""
        h, emb = self.hidden_size, self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        outer = emb + head + h  # + norm_f
        mtp_outer = 2 * h + 2 * h * h + h  # enorm + hnorm, eh_proj, final_layernorm

        def total(pattern: str, active: bool) -> int:
            return sum(self.layer_params(s, active=active) for s in pattern)

        n_mtp, mtp_p = self.num_nextn_predict_layers, self.mtp_hybrid_override_pattern
        backbone = outer + total(self.hybrid_override_pattern, False)
        mtp = n_mtp * (mtp_outer + total(mtp_p, False))
        return ParamCounts(total=backbone + mtp, backbone=backbone, mtp=mtp,
                           active=outer + total(self.hybrid_override_pattern, True),
                           mtp_active=n_mtp * (mtp_outer + total(mtp_p, True)),
                           embedding=emb, lm_head=head)

    # ------------------------------------------------------------------ checkpoint names
    def _block_tensors(self, prefix: str, symbol: str) -> Iterator[tuple[str, Shape]]:
        h, m = self.hidden_size, f"{prefix}.mixer"

        def linear(name: str, rows: int, cols: int, bias: bool | None = False) -> Iterator:
            yield f"{m}.{name}.weight", (rows, cols)
            if bias:
                yield f"{m}.{name}.bias", (rows,)

        yield f"{prefix}.norm.weight", (h,)
        if symbol == "M":
            heads, d_inner, conv = self.mamba_num_heads, self.mamba_d_inner, self.mamba_conv_dim
            yield from ((f"{m}.A_log", (heads,)), (f"{m}.D", (heads,)),
                        (f"{m}.conv1d.weight", (conv, 1, self.conv_kernel)))
            if self.use_conv_bias:
                yield f"{m}.conv1d.bias", (conv,)
            yield f"{m}.dt_bias", (heads,)
            yield from linear("in_proj", self.mamba_in_proj_rows, h, self.use_bias)
            yield f"{m}.norm.weight", (d_inner,)
            yield from linear("out_proj", h, d_inner, self.use_bias)
        elif symbol == "*":
            q, kv = self.attention_q_dim, self.attention_kv_dim
            for name, rows, cols in (("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h),
                                     ("o_proj", h, q)):
                yield from linear(name, rows, cols)
        elif symbol == "-":
            yield from linear("up_proj", self.intermediate_size, h, self.mlp_bias)
            yield from linear("down_proj", h, self.intermediate_size, self.mlp_bias)
        elif symbol == "E":
            n, inter = self.n_routed_experts, self.moe_intermediate_size
            d_in = self.moe_latent_size or h
            yield from linear("gate", n, h)
            yield f"{m}.gate.e_score_correction_bias", (n,)  # FP32 on disk
            for e in range(n):
                yield from linear(f"experts.{e}.up_proj", inter, d_in)
                yield from linear(f"experts.{e}.down_proj", d_in, inter)
            shared = self.moe_shared_expert_intermediate_size
            yield from linear("shared_experts.up_proj", shared, h)
            yield from linear("shared_experts.down_proj", h, shared)
            if self.moe_latent_size:
                yield from linear("fc1_latent_proj", self.moe_latent_size, h)
                yield from linear("fc2_latent_proj", h, self.moe_latent_size)

    def hf_tensors(self) -> Iterator[tuple[str, Shape]]:
        """(name, shape) of every tensor in the released on-disk HF layout.

        ``backbone.*`` (released spelling ``backbone.embeddings``; transformers 5.12 writes
        ``backbone.embedding``), per-expert up/down, ``lm_head`` unless tied, then ``mtp.*``.
        MTP depth d, block i is ``mtp.layers.{d * len(mtp_pattern) + i}``; a depth's first block
        also holds enorm/hnorm/eh_proj, its last final_layernorm (released models: 1 depth).
        """
        h, mtp = self.hidden_size, self.mtp_hybrid_override_pattern
        yield "backbone.embeddings.weight", (self.vocab_size, h)
        for i, sym in enumerate(self.hybrid_override_pattern):
            yield from self._block_tensors(f"backbone.layers.{i}", sym)
        yield "backbone.norm_f.weight", (h,)
        if not self.tie_word_embeddings:
            yield "lm_head.weight", (self.vocab_size, h)
        for depth in range(self.num_nextn_predict_layers):
            for i, sym in enumerate(mtp):
                prefix = f"mtp.layers.{depth * len(mtp) + i}"
                if i == 0:
                    yield from ((f"{prefix}.enorm.weight", (h,)), (f"{prefix}.hnorm.weight", (h,)),
                                (f"{prefix}.eh_proj.weight", (h, 2 * h)))
                yield from self._block_tensors(prefix, sym)
                if i == len(mtp) - 1:
                    yield f"{prefix}.final_layernorm.weight", (h,)

    def hf_tensor_names(self) -> Iterator[str]:
        """On-disk tensor names (a generator; conversion checks coverage against it)."""
        return (name for name, _ in self.hf_tensors())

    def hf_tensor_count(self) -> int:
        return sum(1 for _ in self.hf_tensors())


def mtp_block_pattern(cfg: Mapping[str, Any] | object | None) -> str:
    """The MTP block's layer pattern ("" without MTP) from a config or a partial one (None: no config),
    in either spelling; raises IncompleteConfigError when MTP is on but its pattern is missing."""
    def get(key: str, default: Any = None) -> Any:
        value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
        return default if value is None else value

    return _read_pattern(get, "mtp_hybrid_override_pattern", "mtp_layers_block_type", True) \
        if cfg is not None and get("num_nextn_predict_layers", 0) else ""


def _read_pattern(get: Any, str_key: str, list_key: str, required: bool) -> str:
    """Read a pattern given as a string, a transformers-5 list, or both (which must agree)."""
    text, blocks = get(str_key, None), get(list_key, None)
    if text is not None:
        _check_symbols(str_key, text)
    if blocks is not None:
        from_list = _blocks_to_pattern(list_key, blocks)
        _require(text is None or from_list == text,
                 f"{str_key}={text!r} disagrees with {list_key} (= {from_list!r})")
        text = from_list
    if text is None and required:
        raise IncompleteConfigError(f"Nemotron-H architecture: config is missing required key {str_key!r} "
                                    f"(or {list_key!r})")
    return text or ""


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
