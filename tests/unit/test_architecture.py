"""Tests for nemotron3_super.architecture: presets, config spellings, counts, names, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nemotron3_super import architecture as arch_mod
from nemotron3_super.architecture import (
    PRESETS,
    SuperArchitecture,
    nano_30b_a3b,
    pattern_to_blocks,
    super_120b_a12b,
    tiny_super,
)

REFERENCE = Path(__file__).parents[3] / "shared" / "reference"
PACKAGED = Path(arch_mod.__file__).parent / "configs"
SUPER_FILE, NANO_FILE = "nemotron-3-super-120b-a12b", "nemotron-3-nano-30b-a3b"

# The published hyperparameters, written here (not read from a file this package ships): the released
# config.json of NVIDIA-Nemotron-3-Super-120B-A12B and -Nano-30B-A3B, as the model cards and the Nemotron 3
# papers (arXiv:2512.20856, arXiv:2604.12374) give them. Every field of SuperArchitecture is listed.
_SHARED = {"vocab_size": 131072, "layer_norm_epsilon": 1e-05, "max_position_embeddings": 262144,
           "tie_word_embeddings": False, "residual_in_fp32": False, "num_attention_heads": 32,
           "num_key_value_heads": 2, "head_dim": 128, "attention_bias": False, "mamba_head_dim": 64,
           "ssm_state_size": 128, "n_groups": 8, "conv_kernel": 4, "chunk_size": 128, "use_conv_bias": True,
           "use_bias": False, "mamba_hidden_act": "silu", "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
           "norm_topk_prob": True, "mlp_hidden_act": "relu2", "mlp_bias": False}
SUPER_FACTS = {**_SHARED, "hidden_size": 4096,
               "hybrid_override_pattern": "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*"
                                          "EMEMEMEM*EMEMEMEME",
               "mamba_num_heads": 128, "n_routed_experts": 512, "num_experts_per_tok": 22,
               "moe_intermediate_size": 2688, "moe_shared_expert_intermediate_size": 5376, "moe_latent_size": 1024,
               "routed_scaling_factor": 5.0, "intermediate_size": 2688, "num_nextn_predict_layers": 1,
               "mtp_hybrid_override_pattern": "*E"}
NANO_FACTS = {**_SHARED, "hidden_size": 2688,
              "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
              "mamba_num_heads": 64, "n_routed_experts": 128, "num_experts_per_tok": 6,
              "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712, "moe_latent_size": None,
              "routed_scaling_factor": 2.5, "intermediate_size": 1856, "num_nextn_predict_layers": 0,
              "mtp_hybrid_override_pattern": ""}


def super_dict() -> dict:
    """The packaged Super config.json (what the preset is read from), as a dict to edit."""
    return json.loads((PACKAGED / f"{SUPER_FILE}.json").read_text())


# ---------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset, facts", [(super_120b_a12b, SUPER_FACTS), (nano_30b_a3b, NANO_FACTS)])
def test_preset_has_the_published_hyperparameters(preset, facts):
    arch = preset()
    assert set(facts) == {f.name for f in dataclasses.fields(arch)}  # nothing left unchecked
    assert {k: getattr(arch, k) for k in facts} == facts


@pytest.mark.parametrize("stem", [SUPER_FILE, NANO_FILE])
def test_packaged_config_is_the_released_file(stem):
    """Byte-for-byte content check against the shared reference copy of the released config.json, where
    this machine has it (the facts test above does not need it)."""
    shared = REFERENCE / f"{stem}.config.json"
    if not shared.exists():
        pytest.skip(f"{shared} is not on this machine")
    assert json.loads((PACKAGED / f"{stem}.json").read_text()) == json.loads(shared.read_text())


def test_presets_registry():
    assert set(PRESETS) == {"super_120b_a12b", "nano_30b_a3b", "tiny_super"}
    for make in PRESETS.values():
        assert isinstance(make(), SuperArchitecture)


def test_super_derived_sizes():
    """Sizes derived from the published fields (FACTS: 40 M + 40 E + 8 *, in_proj 18,560 rows)."""
    a = super_120b_a12b()
    pattern = a.hybrid_override_pattern
    assert a.num_hidden_layers == 88
    assert (pattern.count("M"), pattern.count("E"), pattern.count("*"), pattern.count("-")) == (40, 40, 8, 0)
    assert (a.mamba_in_proj_rows, a.mamba_conv_dim, a.mamba_d_inner) == (18560, 10240, 8192)


def test_tiny_super_shape():
    t, s = tiny_super(), super_120b_a12b()
    assert t.hybrid_override_pattern == "MEME*ME" and t.mtp_hybrid_override_pattern == "*E"
    assert t.moe_latent_size < t.hidden_size <= 128
    assert t.n_routed_experts >= 4 and t.num_experts_per_tok == 2 and t.vocab_size == 256
    t.validate_parallelism(tp=2, ep=2)
    # only sizes differ: flags and the activation recipe come from Super
    for field in ("use_conv_bias", "use_bias", "norm_topk_prob", "mlp_hidden_act",
                  "routed_scaling_factor", "tie_word_embeddings", "conv_kernel"):
        assert getattr(t, field) == getattr(s, field)


def test_architecture_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        super_120b_a12b().hidden_size = 1  # type: ignore[misc]


# ---------------------------------------------------------------------- config spellings
def test_both_spellings_parse_the_same():
    old = super_dict()
    new = {k: v for k, v in old.items() if k not in ("hybrid_override_pattern", "mtp_hybrid_override_pattern")}
    new["layers_block_type"] = pattern_to_blocks(old["hybrid_override_pattern"])
    new["mtp_layers_block_type"] = pattern_to_blocks(old["mtp_hybrid_override_pattern"])
    both = {**old, **new}
    a = SuperArchitecture.from_hf_config(old)
    assert SuperArchitecture.from_hf_config(new) == a
    assert SuperArchitecture.from_hf_config(both) == a
    assert SuperArchitecture.from_hf_config(SimpleNamespace(**new)) == a  # config-object path


def test_alternative_block_names():
    cfg = super_dict()
    del cfg["hybrid_override_pattern"]
    names = {"M": "linear_attention", "E": "moe", "*": "full_attention"}
    cfg["layers_block_type"] = [names[s] for s in super_dict()["hybrid_override_pattern"]]
    assert SuperArchitecture.from_hf_config(cfg) == super_120b_a12b()


def test_spellings_that_disagree_raise():
    cfg = super_dict()
    cfg["layers_block_type"] = pattern_to_blocks("M" + cfg["hybrid_override_pattern"][1:].replace("E", "M", 1))
    with pytest.raises(ValueError, match="hybrid_override_pattern=.*disagrees with layers_block_type"):
        SuperArchitecture.from_hf_config(cfg)
    cfg = super_dict()
    cfg["mtp_layers_block_type"] = ["moe", "attention"]
    with pytest.raises(ValueError, match="mtp_hybrid_override_pattern='\\*E' disagrees"):
        SuperArchitecture.from_hf_config(cfg)


def test_round_trip_and_hf_keys():
    for make in PRESETS.values():
        a = make()
        d = a.to_hf_config_dict()
        assert d["architectures"] == ["NemotronHForCausalLM"] and d["model_type"] == "nemotron_h"
        assert d["hybrid_override_pattern"] == a.hybrid_override_pattern
        assert "layers_block_type" not in d  # its block names differ between transformers 5.12 and 5.17
        assert d["num_hidden_layers"] == a.num_hidden_layers
        assert SuperArchitecture.from_hf_config(d) == a
    d = super_120b_a12b().to_hf_config_dict(extra={"bos_token_id": 1, "hidden_size": 1})
    assert d["bos_token_id"] == 1 and d["hidden_size"] == 4096  # architecture keys win
    assert d["mtp_hybrid_override_pattern"] == "*E" and "mtp_layers_block_type" not in d
    stale = super_120b_a12b().to_hf_config_dict(extra={"layers_block_type": ["mamba"], "mtp_layers_block_type": []})
    assert "layers_block_type" not in stale and "mtp_layers_block_type" not in stale
    original = super_dict()
    assert {k: v for k, v in d.items() if k in original} == {k: original[k] for k in d if k in original}
    assert "mtp_hybrid_override_pattern" not in nano_30b_a3b().to_hf_config_dict()


def test_transformers5_default_mtp_list_ignored_without_mtp():
    cfg = json.loads((PACKAGED / f"{NANO_FILE}.json").read_text())
    cfg["mtp_layers_block_type"] = ["attention", "moe"]  # what transformers 5 writes for Nano
    assert SuperArchitecture.from_hf_config(cfg) == nano_30b_a3b()


# ---------------------------------------------------------------------- counts and names
def test_super_parameter_counts():
    c = super_120b_a12b().param_counts()
    assert c.total == 123_611_033_088
    assert c.backbone == 120_668_707_840
    assert c.mtp == 2_942_325_248
    assert c.active == 12_770_237_440  # "12.7B active"; MTP excluded
    assert c.mtp_active == 244_863_488
    assert c.embedding == c.lm_head == 131072 * 4096


def test_nano_parameter_counts():
    c = nano_30b_a3b().param_counts()
    assert (c.total, c.backbone, c.mtp) == (31_577_940_288, 31_577_940_288, 0)  # "31.6B"
    assert c.active == 3_580_076_352  # "3.6B incl. embeddings"
    assert c.active - c.embedding == 3_227_754_816  # "3.2B" without the input embedding


@pytest.mark.parametrize("make", list(PRESETS.values()))
def test_tensor_shapes_sum_to_param_count(make):
    a = make()
    tensors = list(a.hf_tensors())
    names = [n for n, _ in tensors]
    assert len(names) == len(set(names)) == a.hf_tensor_count()
    assert sum(math.prod(shape) for _, shape in tensors) == a.param_counts().total
    mtp = sum(math.prod(shape) for n, shape in tensors if n.startswith("mtp."))
    assert mtp == a.param_counts().mtp


def test_super_tensor_names():
    a = super_120b_a12b()
    shapes = dict(a.hf_tensors())
    assert len(shapes) == a.hf_tensor_count() == 42_683
    assert sum(n.startswith("mtp.") for n in shapes) == 1_040
    assert sum(n.endswith("e_score_correction_bias") for n in shapes) == 41  # the FP32 tensors
    assert shapes["backbone.embeddings.weight"] == shapes["lm_head.weight"] == (131072, 4096)
    assert shapes["backbone.norm_f.weight"] == (4096,)
    assert shapes["backbone.layers.0.mixer.in_proj.weight"] == (18560, 4096)
    assert shapes["backbone.layers.0.mixer.conv1d.weight"] == (10240, 1, 4)
    assert shapes["backbone.layers.0.mixer.norm.weight"] == (8192,)
    assert shapes["backbone.layers.0.mixer.A_log"] == (128,)
    assert shapes["backbone.layers.1.mixer.experts.511.up_proj.weight"] == (2688, 1024)
    assert shapes["backbone.layers.1.mixer.experts.511.down_proj.weight"] == (1024, 2688)
    assert shapes["backbone.layers.1.mixer.fc1_latent_proj.weight"] == (1024, 4096)
    assert shapes["backbone.layers.1.mixer.fc2_latent_proj.weight"] == (4096, 1024)
    assert shapes["backbone.layers.1.mixer.shared_experts.up_proj.weight"] == (5376, 4096)
    assert shapes["backbone.layers.1.mixer.gate.weight"] == (512, 4096)
    assert shapes["backbone.layers.7.mixer.k_proj.weight"] == (256, 4096)
    mtp = {n: s for n, s in shapes.items() if n.startswith("mtp.") and ".experts." not in n}
    assert mtp["mtp.layers.0.eh_proj.weight"] == (4096, 8192)
    assert set(mtp) == {
        "mtp.layers.0.enorm.weight", "mtp.layers.0.hnorm.weight", "mtp.layers.0.eh_proj.weight",
        "mtp.layers.0.norm.weight", *(f"mtp.layers.0.mixer.{p}_proj.weight" for p in "qkvo"),
        "mtp.layers.1.norm.weight", "mtp.layers.1.mixer.gate.weight",
        "mtp.layers.1.mixer.gate.e_score_correction_bias",
        "mtp.layers.1.mixer.shared_experts.up_proj.weight",
        "mtp.layers.1.mixer.shared_experts.down_proj.weight",
        "mtp.layers.1.mixer.fc1_latent_proj.weight", "mtp.layers.1.mixer.fc2_latent_proj.weight",
        "mtp.layers.1.final_layernorm.weight",
    }
    assert not any(n.startswith("model.") for n in shapes)


def test_hf_tensor_names_is_a_generator_and_tied_drops_lm_head():
    a = super_120b_a12b()
    names = a.hf_tensor_names()
    assert next(names) == "backbone.embeddings.weight"
    tied = dataclasses.replace(tiny_super(), tie_word_embeddings=True)
    assert "lm_head.weight" not in set(tied.hf_tensor_names())
    assert tied.param_counts().lm_head == 0


def test_dense_mlp_layer_counts():
    a = dataclasses.replace(tiny_super(), hybrid_override_pattern="M-*E", mlp_bias=False)
    shapes = dict(a.hf_tensors())
    assert shapes["backbone.layers.1.mixer.up_proj.weight"] == (64, 128)
    assert a.layer_params("-") == 128 + 2 * 128 * 64


# ---------------------------------------------------------------------- clear errors
def make(**changes) -> SuperArchitecture:
    return dataclasses.replace(tiny_super(), **changes)


@pytest.mark.parametrize("changes, message", [
    ({"hybrid_override_pattern": "MEMX*"}, r"hybrid_override_pattern has unknown layer symbol 'X' at position 3"),
    ({"mtp_hybrid_override_pattern": "*Q"}, r"mtp_hybrid_override_pattern has unknown layer symbol 'Q' at position 1"),
    ({"num_attention_heads": 5}, r"num_attention_heads=5 is not divisible by num_key_value_heads=2"),
    ({"moe_latent_size": 256}, r"moe_latent_size=256 is larger than hidden_size=128"),
    ({"num_experts_per_tok": 9}, r"num_experts_per_tok=9 is larger than n_routed_experts=8"),
    ({"mamba_num_heads": 9}, r"mamba_num_heads=9 is not divisible by n_groups=2"),
    ({"num_nextn_predict_layers": 0}, r"num_nextn_predict_layers=0 with mtp_hybrid_override_pattern='\*E'"),
    ({"hidden_size": 0}, r"hidden_size=0: expected an integer > 0"),
    ({"use_conv_bias": "yes"}, r"use_conv_bias='yes': expected a bool"),
    ({"head_dim": None}, r"head_dim is required because the pattern has attention \('\*'\) layers"),
    ({"n_shared_experts": 2}, r"n_shared_experts=2: expected 1"),
    ({"attention_bias": True}, r"attention_bias=True: expected False"),
    ({"routed_scaling_factor": 0}, r"routed_scaling_factor=0: expected a number > 0"),
])
def test_validation_errors_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        make(**changes)


def test_num_hidden_layers_must_match_pattern():
    cfg = super_dict()
    cfg["num_hidden_layers"] = 87
    with pytest.raises(ValueError, match="num_hidden_layers=87 but hybrid_override_pattern has 88 layers"):
        SuperArchitecture.from_hf_config(cfg)


@pytest.mark.parametrize("key", ["num_key_value_heads", "max_position_embeddings", "n_groups",
                                 "moe_shared_expert_intermediate_size", "hybrid_override_pattern"])
def test_missing_required_key_is_named(key):
    cfg = super_dict()
    del cfg[key]
    with pytest.raises(ValueError, match=f"missing required key '{key}'"):
        SuperArchitecture.from_hf_config(cfg)


def test_missing_mtp_pattern_never_defaults():
    cfg = super_dict()
    del cfg["mtp_hybrid_override_pattern"]
    with pytest.raises(ValueError, match="missing required key 'mtp_hybrid_override_pattern'"):
        SuperArchitecture.from_hf_config(cfg)


def test_unknown_block_type_and_model_type():
    cfg = super_dict()
    cfg["layers_block_type"] = ["mamba", "moe", "retention"]
    del cfg["hybrid_override_pattern"]
    with pytest.raises(ValueError, match="layers_block_type has unknown block type 'retention' at position 2"):
        SuperArchitecture.from_hf_config(cfg)
    with pytest.raises(ValueError, match="model_type='llama'"):
        SuperArchitecture.from_hf_config({**super_dict(), "model_type": "llama"})


def test_from_json_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match="absent.json"):
        SuperArchitecture.from_json_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        SuperArchitecture.from_json_file(bad)
    partial = tmp_path / "partial.json"
    cfg = super_dict()
    del cfg["vocab_size"]
    partial.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="partial.json: .*missing required key 'vocab_size'"):
        SuperArchitecture.from_json_file(partial)


# ---------------------------------------------------------------------- parallelism
def test_super_parallel_layouts_used_upstream():
    s = super_120b_a12b()
    s.validate_parallelism(tp=1, pp=2, ep=32)  # pretrain default
    s.validate_parallelism(tp=8, ep=16)  # full SFT: kv heads 2 replicated 4x
    with pytest.raises(ValueError, match="num_key_value_heads=2 does not fit tp=4"):
        s.validate_parallelism(tp=4, allow_kv_replication=False)


@pytest.mark.parametrize("arch, kwargs, message", [
    ("super", {"ep": 3}, r"n_routed_experts=512 is not divisible by ep=3"),
    ("super", {"tp": 3}, r"num_attention_heads=32 is not divisible by tp=3"),
    ("super", {"tp": 16}, r"n_groups=8 is not divisible by tp=16"),
    ("super", {"etp": 5}, r"moe_intermediate_size=2688 is not divisible by etp=5"),
    ("super", {"pp": 89}, r"pp=89 exceeds num_hidden_layers=88"),
    ("super", {"tp": 0}, r"tp=0: expected a positive integer"),
    ("kv3", {"tp": 2}, r"num_key_value_heads=3 does not fit tp=2"),
    ("mamba6", {"tp": 4}, r"mamba_num_heads=6 is not divisible by tp=4"),
])
def test_parallelism_errors(arch, kwargs, message):
    model = {"super": super_120b_a12b(),
             "kv3": dataclasses.replace(super_120b_a12b(), num_attention_heads=48, num_key_value_heads=3),
             "mamba6": make(mamba_num_heads=6)}[arch]
    with pytest.raises(ValueError, match=message):
        model.validate_parallelism(**kwargs)


# ---------------------------------------------------------------------- import cost
def test_import_pulls_in_no_heavy_framework():
    code = ("import sys, nemotron3_super.architecture as a; a.super_120b_a12b().hf_tensor_count();"
            "print(sorted({'torch', 'transformers', 'megatron'} & set(sys.modules)))")
    root = Path(arch_mod.__file__).parents[1]
    env = {"PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root, env=env)
    assert out.stdout.strip() == "[]"
