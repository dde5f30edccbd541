"""Megatron LoRA (host's LoRA, six targets) on tiny Super -> HF PEFT folder -> transformers + peft.

CPU only: a Megatron forward needs Triton (Mamba), so the checks are on the HF side plus a weight-level
check of the name mapping (merge in Megatron, export with the bridge == merge in HF by our mapping).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # builds the Megatron model (needs mamba-ssm importable)
IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4, 200, 17, 63, 8]])


def _load_hf_into(model, src) -> None:
    from nemotron3_super.bridge.pairing import megatron_tensors, module_of, plan

    tensors = megatron_tensors(model)
    for pair in plan(tensors, src.arch):
        converted = pair.mapping.hf_to_megatron(pair.hf_inputs(src.get), module_of(model, pair.local))
        with torch.no_grad():
            tensors[pair.local].copy_(converted)


def _unwrapped(model) -> dict[str, torch.Tensor]:
    """Megatron tensors by base names, LoRA merged in (W + B@A * alpha/r), ``to_wrap`` / adapters removed."""
    from nemotron3_super.bridge.pairing import megatron_tensors
    from nemotron3_super.conversion.lora_extract import lora_modules

    out = {n.replace(".to_wrap.", "."): t.detach().clone().float() for n, t in megatron_tensors(model).items()
           if ".adapter." not in n}
    for name, wrapper in lora_modules(model).items():
        a = wrapper.adapter
        out[f"{name}.weight"] += (a.linear_out.weight.double() @ a.linear_in.weight.double()
                                  * (a.alpha / a.dim)).float()
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, process_group) -> dict:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint
    from nemotron3_super.conversion.hf_io import HFCheckpoint
    from nemotron3_super.bridge.pairing import module_of, plan
    from nemotron3_super.conversion.megatron_io import build_model
    from nemotron3_super.conversion.process_groups import cpu_current_device, parallel_group
    from nemotron3_super.conversion.lora_extract import apply_lora, export_adapter, lora_modules, megatron_lora_deltas
    from nemotron3_super.conversion.peft_export import PeftExportError

    root = tmp_path_factory.mktemp("peft")
    arch = tiny_super()
    hf = write_tiny_checkpoint(arch, root / "hf", dtype=torch.float32)
    src = HFCheckpoint(hf)
    with parallel_group(1, 1), cpu_current_device():
        model = build_model(arch, torch.float32, moe_grouped_gemm=False)  # LoRA adapts per-expert linears
        _load_hf_into(model, src)
        model = apply_lora(model)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():  # LoRA B starts at zero: give every adapter non-zero weights
            for wrapper in lora_modules(model).values():
                for lin in (wrapper.adapter.linear_in, wrapper.adapter.linear_out):
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.05)
        # what a LoRA training run's checkpoint save asks of the wrapped model (failed without TE: the
        # host reads in_proj.tp_size)
        lora_checkpoint_keys = [k for k in model.sharded_state_dict() if ".adapter." in k]
        with pytest.raises(PeftExportError) as refused:
            export_adapter(model, arch, root / "refused")
        report = export_adapter(model, arch, root / "adapter", hf_base=hf, merged_base=root / "merged_base")
        deltas = megatron_lora_deltas(model, arch)
        # weight-level reference: LoRA merged on the Megatron side, exported with the bridge table
        merged_meg = _unwrapped(model)
        wrapped, bridge_merged = lora_modules(model), {}
        with torch.no_grad():
            for pair in plan(merged_meg, arch):
                owner = pair.local.rsplit(".", 1)[0]
                module = module_of(model, f"{owner}.to_wrap.weight" if owner in wrapped else pair.local)
                bridge_merged.update(pair.mapping.megatron_to_hf(merged_meg[pair.local], module))
        names = sorted(wrapped)
        # the host's own adapter export (on-disk HF names, per-expert, out_proj and MTP included)
        from transformers import NemotronHConfig

        from nemotron3_super.bridge import SuperBridge

        bridge = SuperBridge()
        bridge.hf_config = NemotronHConfig(**arch.to_hf_config_dict({"torch_dtype": "float32"}))
        host = {w.param_name: w.weight.detach().clone().float()
                for w in bridge.stream_adapter_weights_megatron_to_hf([model], show_progress=False)}
    return {"lora_checkpoint_keys": lora_checkpoint_keys, "hf": hf, "adapter": root / "adapter", "merged_base": root / "merged_base", "report": report,
            "refused": str(refused.value), "deltas": deltas, "bridge_merged": bridge_merged, "src": src,
            "lora_names": names, "root": root, "host": host}


def _hf_model(folder: Path):
    from transformers import NemotronHForCausalLM

    return NemotronHForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_all_six_targets_wrapped(exported) -> None:
    kinds = {n.rsplit(".", 1)[-1] for n in exported["lora_names"]}
    assert kinds == {"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj", "out_proj"}
    assert not any("latent_proj" in n for n in exported["lora_names"])


def test_unsupported_adapters_are_refused_by_name(exported) -> None:
    msg = exported["refused"]
    assert "mixer.out_proj" in msg and "Mamba out_proj" in msg and "mtp.layers.0" in msg
    assert "merged_base" in msg
    assert not (exported["root"] / "refused").exists()


def test_report_names_every_merged_tensor(exported) -> None:
    report = exported["report"]
    text = report.render()
    print(text)
    out_proj = {d.hf_weight for d in exported["deltas"] if d.hf_weight.endswith("mixer.out_proj.weight")}
    mtp = {d.hf_weight for d in exported["deltas"] if d.hf_weight.startswith("mtp.")}
    assert out_proj and mtp and set(report.merged) == out_proj | mtp
    assert "MERGED into base" in text and "Mamba out_proj" in text and "MTP" in text and "latent" in text
    cfg = json.loads((exported["adapter"] / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(exported["merged_base"])
    assert not any("out_proj" in m for m in cfg["target_modules"])
    assert any(m.endswith("mixer.q_proj") for m in cfg["target_modules"])
    assert any(m.endswith("shared_experts.up_proj") for m in cfg["target_modules"])
    assert any(m.endswith("mixer.in_proj") for m in cfg["target_modules"])
    assert sorted(p.rsplit(".", 1)[-1] for p in cfg["target_parameters"]) == ["down_proj"] * 3 + ["up_proj"] * 3


def test_factors_equal_host_adapter_stream(exported) -> None:
    """Our A/B per on-disk HF name are exactly what the host's stream_adapter_weights_megatron_to_hf yields."""
    host, deltas = exported["host"], exported["deltas"]
    assert len(host) == 2 * len(deltas)
    for d in deltas:
        stem = d.hf_weight.removesuffix(".weight")
        assert torch.equal(host[f"{stem}.lora_A.weight"], d.A), stem
        assert torch.equal(host[f"{stem}.lora_B.weight"], d.B), stem


def test_mapping_matches_bridge_export_of_megatron_merge(exported) -> None:
    """Every delta, applied to the HF base by our HF naming, equals the bridge export of the Megatron-side merge."""
    src, deltas, ref = exported["src"], exported["deltas"], exported["bridge_merged"]
    touched = {}
    for d in deltas:
        touched[d.hf_weight] = touched.get(d.hf_weight, src.get(d.hf_weight).float()) + d.delta()
    assert len(touched) > 30
    for name, mine in touched.items():
        torch.testing.assert_close(mine, ref[name].float(), rtol=1e-5, atol=1e-6, msg=name)


def test_peft_loads_and_matches_hand_merge(exported) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    base = _hf_model(exported["merged_base"])
    base_logits = _logits(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, str(exported["adapter"])).eval()
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower()
           or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    saved = load_file(str(exported["adapter"] / "adapter_model.safetensors"))
    loaded = {n.replace(".default", ""): p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert sorted(loaded) == sorted(saved)
    for n, t in saved.items():
        assert torch.equal(loaded[n].detach(), t), n
    peft_logits = _logits(peft_model)
    assert torch.isfinite(peft_logits).all()
    assert _rel(peft_logits, base_logits) > 1e-3

    # strong check: the original HF base with EVERY delta merged by hand (out_proj/MTP included)
    hand = _hf_model(exported["hf"])
    src = exported["src"]
    merged = {}
    for d in exported["deltas"]:
        merged[d.hf_weight] = merged.get(d.hf_weight, src.get(d.hf_weight).float()) + d.delta()
    params = dict(hand.named_parameters())
    with torch.no_grad():
        for name, w in merged.items():
            if name.startswith("mtp."):
                continue  # transformers has no MTP forward
            m = re.match(r"backbone\.(layers\.\d+\.mixer\.experts)\.(\d+)\.(\w+)\.weight", name)
            if m:
                params[f"model.{m.group(1)}.{m.group(3)}"][int(m.group(2))].copy_(w)
            else:
                params["model." + name.removeprefix("backbone.")].copy_(w)
    hand_logits = _logits(hand)
    print(f"rel L2: peft vs merged base {_rel(peft_logits, base_logits):.3g}, "
          f"peft vs hand merge {_rel(peft_logits, hand_logits):.3g}")
    assert _rel(peft_logits, hand_logits) <= 1e-5, _rel(peft_logits, hand_logits)


def test_peft_only_set_without_merge(exported, tmp_path: Path) -> None:
    """PEFT-supported set alone on the untouched base: PEFT == hand merge of exactly those deltas."""
    from peft import PeftModel

    from nemotron3_super.conversion.peft_export import peft_state

    deltas = [d for d in exported["deltas"] if d.kind in ("module", "expert")]
    # reuse the exported adapter, pointed at the ORIGINAL base: only the PEFT-expressible deltas apply
    peft_model = PeftModel.from_pretrained(_hf_model(exported["hf"]), str(exported["adapter"])).eval()
    hand = _hf_model(exported["hf"])
    params = dict(hand.named_parameters())
    state, _, _ = peft_state(deltas, 8)
    assert len(state) == 2 * (sum(d.kind == "module" for d in deltas) + 6)  # + 3 MoE layers x up/down
    with torch.no_grad():
        for d in deltas:
            m = re.match(r"backbone\.(layers\.\d+\.mixer\.experts)\.(\d+)\.(\w+)\.weight", d.hf_weight)
            if m:
                params[f"model.{m.group(1)}.{m.group(3)}"][int(m.group(2))].add_(d.delta())
            else:
                params["model." + d.hf_weight.removeprefix("backbone.")].add_(d.delta())
    original = _logits(_hf_model(exported["hf"]))
    got, want = _logits(peft_model), _logits(hand)
    print(f"rel L2 (PEFT set only): peft vs base {_rel(got, original):.3g}, peft vs hand merge {_rel(got, want):.3g}")
    assert _rel(got, original) > 1e-3
    assert _rel(got, want) <= 1e-5


def test_cli_converts_host_written_adapter(exported, tmp_path: Path, capsys) -> None:
    """The host's own save_hf_adapter layout (backbone.* names, per-expert, out_proj) does not load in PEFT;
    `convert export-lora` turns it into the same folder as the in-process export."""
    from megatron.bridge.models.conversion.model_bridge import HFWeightTuple
    from megatron.bridge.models.conversion.peft_bridge import (build_adapter_config_dict,
                                                               convert_adapter_weights_to_peft_state,
                                                               infer_target_modules_from_adapter_weights)
    from megatron.bridge.peft.lora import LoRA
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    from nemotron3_super.cli import main

    host_dir = tmp_path / "host_adapter"  # what AutoBridge.save_hf_adapter writes, from the same functions
    host_dir.mkdir()
    weights = [HFWeightTuple(n, t) for n, t in exported["host"].items()]
    state, module_keys, params = convert_adapter_weights_to_peft_state(weights)
    save_file(state, str(host_dir / "adapter_model.safetensors"))
    config = build_adapter_config_dict(LoRA(dim=32, alpha=32), infer_target_modules_from_adapter_weights(module_keys),
                                       params, str(exported["hf"]))
    (host_dir / "adapter_config.json").write_text(json.dumps(config))
    assert "out_proj" in config["target_modules"]
    with pytest.raises(ValueError, match="out_proj"):  # FACTS #4: PEFT refuses the host's export
        PeftModel.from_pretrained(_hf_model(exported["hf"]), str(host_dir))

    args = ["convert", "export-lora", "--hf-model", str(exported["hf"]), "--host-adapter", str(host_dir)]
    assert main([*args, "--adapter-path", str(tmp_path / "refused")]) == 2
    assert "cannot be expressed in HF PEFT" in capsys.readouterr().err
    assert main([*args, "--adapter-path", str(tmp_path / "out"), "--merged-base", str(tmp_path / "base")]) == 0
    assert "MERGED into base" in capsys.readouterr().out
    ours, ref = (load_file(str(p / "adapter_model.safetensors")) for p in (tmp_path / "out", exported["adapter"]))
    assert sorted(ours) == sorted(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    base, ref_base = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "base", exported["merged_base"]))
    assert sorted(base) == sorted(ref_base)
    for k in ref_base:
        torch.testing.assert_close(base[k], ref_base[k], rtol=0, atol=1e-6, msg=k)


def test_lora_model_sharded_state_dict_has_every_adapter(exported) -> None:
    """A LoRA run's checkpoint save (the host's sharded_state_dict through its adapter wrappers) works on
    the TE-free spec, Mamba in_proj included, and holds both LoRA factors of every adapter."""
    keys = exported["lora_checkpoint_keys"]
    assert any("mixer.in_proj.adapter." in k for k in keys), keys[:10]
    assert len([k for k in keys if "linear_in" in k]) == len([k for k in keys if "linear_out" in k]) > 0
