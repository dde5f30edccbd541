"""HF <-> Megatron conversion on CPU: bit-exact round trips, transformers reload, host reload, bad input.

Fixtures stand for released checkpoints (transformers-built, then ``backbone.embeddings``, MTP tensors and
FP32 router biases as on disk). Two shapes: tiny Super (latent MoE + MTP) and tiny Nano (neither, FP32
router weights as Nano ships them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # needs mamba-ssm (installed by .ci/env.sh): megatron-core's MambaMixer needs it to build
SHAPES = ("tiny_super", "tiny_nano")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per shape: the original HF folder, the Megatron checkpoint from `convert import`, the export."""
    from nemotron3_super.conversion.commands import export_checkpoint, import_checkpoint
    from nemotron3_super.conversion.fixtures import PRESETS, write_tiny_checkpoint

    out = {}
    for shape in SHAPES:
        root = tmp_path_factory.mktemp(shape)
        hf = write_tiny_checkpoint(PRESETS[shape](), root / "hf", fp32_router_weight=shape == "tiny_nano")
        import_checkpoint(hf, root / "megatron")
        export_checkpoint(hf, root / "megatron", root / "exported")
        out[shape] = {"hf": hf, "megatron": root / "megatron", "exported": root / "exported"}
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_bit_exact(converted, shape: str) -> None:
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.fixtures import PRESETS

    report = audit(converted[shape]["hf"], converted[shape]["exported"])
    print(report.render())
    arch = PRESETS[shape]()
    assert report.ok, report.render()
    assert report.tensors == arch.hf_tensor_count()
    assert report.mtp_tensors == sum(1 for n in arch.hf_tensor_names() if n.startswith("mtp."))
    assert (report.mtp_tensors > 0) == (shape == "tiny_super")
    assert len(report.fp32_tensors) == 4  # super: 3 backbone + 1 MTP biases; nano: 2 biases + 2 gate weights


def test_fixture_biases_carry_fp32_only_bits(converted) -> None:
    from nemotron3_super.conversion.hf_io import HFCheckpoint

    ckpt = HFCheckpoint(converted["tiny_super"]["exported"])
    bias = ckpt.get("mtp.layers.1.mixer.gate.e_score_correction_bias")
    assert bias.dtype == torch.float32 and not torch.equal(bias.to(torch.bfloat16).float(), bias)
    bias = ckpt.get("backbone.layers.1.mixer.gate.e_score_correction_bias")
    assert bias.dtype == torch.float32 and not torch.equal(bias.to(torch.bfloat16).float(), bias)


@pytest.mark.parametrize("shape", SHAPES)
def test_export_loads_in_transformers_with_identical_logits(converted, shape: str) -> None:
    from transformers import AutoModelForCausalLM, NemotronHForCausalLM

    from nemotron3_super.conversion.fixtures import PRESETS

    paths = converted[shape]
    config = json.loads((paths["exported"] / "config.json").read_text())
    assert config["architectures"] == ["NemotronHForCausalLM"]
    assert config["hybrid_override_pattern"] == PRESETS[shape]().hybrid_override_pattern
    assert config.get("mtp_hybrid_override_pattern") == ("*E" if shape == "tiny_super" else None)
    assert "layers_block_type" not in config  # its block names differ between transformers 5.12 and 5.17
    ids = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]])
    logits = []
    for loader, folder in ((NemotronHForCausalLM, paths["hf"]), (AutoModelForCausalLM, paths["exported"])):
        model = loader.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.isfinite(logits[0]).all() and torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-experts", "sequential-experts"])
def test_megatron_checkpoint_loads_in_a_fresh_host_model(converted, grouped: bool) -> None:
    """dist_checkpointing.load straight into a freshly built provider model (no code of ours on the path),
    with either expert module (the checkpoint was written with the default, grouped)."""
    from megatron.core import dist_checkpointing

    from nemotron3_super.conversion.hf_io import HFCheckpoint
    from nemotron3_super.conversion.megatron_io import build_model
    from nemotron3_super.conversion.process_groups import single_process_group

    paths = converted["tiny_super"]
    hf = HFCheckpoint(paths["hf"])
    with single_process_group():
        model = build_model(hf.arch, torch.bfloat16, moe_grouped_gemm=grouped)
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(paths["megatron"] / "iter_0000000"))
        model.load_state_dict(state["model"], strict=False)
    params = dict(model.state_dict())
    assert torch.equal(params["embedding.word_embeddings.weight"], hf.get("backbone.embeddings.weight"))
    assert torch.equal(params["mtp.layers.0.eh_proj.weight"], hf.get("mtp.layers.0.eh_proj.weight"))
    bias = params["mtp.layers.0.mtp_model_layer.layers.1.mlp.router.expert_bias"]
    assert bias.dtype == torch.float32 and torch.equal(bias, hf.get("mtp.layers.1.mixer.gate.e_score_correction_bias"))
    expert = (params["decoder.layers.1.mlp.experts.linear_fc2_weight"][7] if grouped
              else params["decoder.layers.1.mlp.experts.local_experts.7.linear_fc2.weight"])
    assert torch.equal(expert, hf.get("backbone.layers.1.mixer.experts.7.down_proj.weight"))
    assert (Path(paths["megatron"]) / "latest_checkpointed_iteration.txt").read_text().strip() == "0"


_HOST_LOAD = """
import sys, torch
import nemotron3_super  # host fixes: no TE here, and CI's mamba-ssm lacks its Mamba-1 CUDA module
from megatron.bridge.training.model_load_save import load_megatron_model
from megatron.bridge.training.utils.checkpoint_utils import checkpoint_exists, read_run_config, read_train_state
from nemotron3_super.conversion.process_groups import cpu_current_device
from nemotron3_super.plugins.host import install_into_host

path, out = sys.argv[1], sys.argv[2]
from megatron.core.tensor_parallel import random as mp_random
mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)  # on GPUs the host seeds CUDA
install_into_host()  # our provider's module joins the host's _target_ allow-list
with cpu_current_device():  # the alltoall dispatcher allocates a CUDA stream at build; same weights
    state = load_megatron_model(path + "/iter_0000000", return_state_dict=True, use_cpu_init=True,
                                mp_overrides={"moe_token_dispatcher_type": "allgather"})["model"]
torch.save({"state": state, "exists": checkpoint_exists(path),
            "steps": [read_train_state(path + n).step for n in ("/latest_train_state.pt",
                                                                 "/iter_0000000/train_state.pt")],
            "run_config": read_run_config(path + "/iter_0000000/run_config.yaml")}, out)
"""


def test_host_reads_the_checkpoint_as_its_own(converted, tmp_path: Path) -> None:
    """Megatron-Bridge's own loader (``load_megatron_model``: run_config.yaml -> provider -> model -> load)
    rebuilds our provider from the checkpoint and gets the same tensors; its train state reads step 0.
    The host side runs in a fresh interpreter: installing into the host is process-wide."""
    import subprocess
    import sys

    from megatron.bridge.training.state import TrainState

    from nemotron3_super.conversion.hf_io import HFCheckpoint
    from nemotron3_super.conversion.megatron_io import build_model, load_checkpoint
    from nemotron3_super.conversion.process_groups import single_process_group

    from launching import free_port, launch_env

    path = Path(converted["tiny_super"]["megatron"])
    env = launch_env()  # the host's loader makes its group through env://: a fresh rendezvous port
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-c", _HOST_LOAD, str(path), str(tmp_path / "host.pt")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    host = torch.load(tmp_path / "host.pt", weights_only=False)
    assert host["exists"] and host["steps"] == [0, 0]
    for name in ("latest_train_state.pt", "iter_0000000/train_state.pt"):
        saved = torch.load(path / name, weights_only=True)
        assert {k: (v.dtype, v.item()) for k, v in saved.items()} == {
            k: (v.dtype, v.item()) for k, v in TrainState().state_dict().items()}  # the host's, field for field
    run_config = host["run_config"]
    assert run_config["model"]["_target_"] == "nemotron3_super.provider.SuperModelProvider"
    assert run_config["model"]["hybrid_layer_pattern"] == "MEME*ME"
    assert run_config["model"]["use_cpu_initialization"] is False  # a training run's provider, not conversion's
    with single_process_group():
        ours = build_model(HFCheckpoint(converted["tiny_super"]["hf"]).arch, torch.bfloat16)
        load_checkpoint(ours, path)
    expected = {k: v for k, v in ours.state_dict().items() if not k.endswith("_extra_state")}
    state = host["state"]
    assert sorted(k for k in state if not k.endswith("_extra_state")) == sorted(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_cli_roundtrip_from_existing_checkpoint(converted, capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.cli import main

    paths = converted["tiny_super"]
    assert main(["roundtrip", "--hf-model", str(paths["hf"]), "--megatron-load-path", str(paths["megatron"])]) == 0
    out = capsys.readouterr().out
    assert "IDENTICAL (every tensor bit-exact)" in out and "MTP tensors: 32" in out


def test_export_one_tensor_per_load_is_bit_exact(converted, tmp_path: Path) -> None:
    """Streaming export loads a group of tensors at a time; groups of one tensor split a layer's experts
    (one checkpoint key) over many loads, which megatron-core's legacy expert layout cannot load alone."""
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.commands import export_checkpoint

    paths = converted["tiny_super"]
    export_checkpoint(paths["hf"], paths["megatron"], tmp_path / "x", group_bytes=1)
    report = audit(paths["hf"], tmp_path / "x")
    assert report.ok and report.mtp_tensors == 32, report.render()


def test_cli_progress_is_ten_lines_off_a_terminal_and_quiet_silences_it(converted, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.cli import main

    paths = converted["tiny_super"]
    args = ["convert", "export", "--hf-model", str(paths["hf"]), "--megatron-path", str(paths["megatron"])]
    assert main([*args, "--hf-path", str(tmp_path / "a")]) == 0
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.startswith("export:")]
    assert len(lines) == 10 and "136/136 tensors" in lines[-1] and "B/s" in lines[-1], out.err[-2000:]
    assert "convert export:" in out.out  # the report stays on stdout
    assert main([*args, "--hf-path", str(tmp_path / "b"), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "export:" not in out.err and "convert export:" in out.out


def test_cli_export_refuses_non_empty_output(converted, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.cli import main

    paths, target = converted["tiny_super"], tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    args = ["convert", "export", "--hf-model", str(paths["hf"]), "--megatron-path", str(paths["megatron"]),
            "--hf-path", str(target)]
    assert main(args) == 2
    assert "exists and is not empty (pass --overwrite to replace it)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "keep.txt").exists()
    assert main([*args, "--overwrite"]) == 2  # not written by this tool: --overwrite does not delete it
    assert "was not written by nemotron3-super" in capsys.readouterr().err and (target / "keep.txt").exists()
    (target / "keep.txt").unlink()
    assert main(args) == 0  # an empty folder is filled
    (target / "stale.txt").write_text("left in an earlier export")
    assert main([*args, "--overwrite"]) == 0  # a folder this tool wrote is replaced as a whole
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").exists()


def _broken(src: Path, dst: Path, how: str) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    if how == "missing":
        del tensors["mtp.layers.0.eh_proj.weight"]
    elif how == "extra":
        tensors["backbone.layers.9.mixer.A_log"] = torch.zeros(8)
    elif how == "shape":
        tensors["backbone.layers.0.mixer.in_proj.weight"] = torch.zeros(300, 128, dtype=torch.bfloat16)
    elif how == "fp8":
        tensors["backbone.layers.0.mixer.in_proj.weight"] = torch.zeros(328, 128, dtype=torch.float8_e4m3fn)
        tensors["backbone.layers.0.mixer.in_proj.weight_scale_inv"] = torch.ones(3, 1)
    elif how == "architecture":
        config["architectures"] = ["NemotronForCausalLM"]
    elif how == "nvfp4":
        config["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4"}
    save_file(tensors, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(config))
    if how == "truncated":
        data = (dst / "model.safetensors").read_bytes()
        (dst / "model.safetensors").write_bytes(data[:-4096])
    return dst


@pytest.mark.parametrize("how, needle", [
    ("missing", r"missing tensor 'mtp.layers.0.eh_proj.weight' \(expected shape \[128, 256\]\)"),
    ("extra", r"unexpected tensor 'backbone.layers.9.mixer.A_log'"),
    ("shape", r"'backbone.layers.0.mixer.in_proj.weight' in model.safetensors has shape \[300, 128\], "
              r"expected \[328, 128\]"),
    ("truncated", r"model.safetensors: truncated safetensors file"),
    ("fp8", r"in_proj.weight' is F8_E4M3\[328, 128\]: a quantized \(NVFP4/FP8\) checkpoint"),
    ("architecture", r"config.json: architectures=\['NemotronForCausalLM'\], expected \['NemotronHForCausalLM'\]"),
    ("nvfp4", r"declares quant_algo=NVFP4 but no tensor is quantized \(no weight_scale anywhere\)"),
])
def test_bad_input_is_named_and_leaves_no_output(converted, tmp_path: Path, how: str, needle: str) -> None:
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.hf_io import CheckpointError

    bad = _broken(converted["tiny_super"]["hf"], tmp_path / f"bad-{how}", how)
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    with pytest.raises(CheckpointError, match=needle):
        import_checkpoint(bad, out_parent / "megatron")
    assert list(out_parent.iterdir()) == []  # neither the output nor a partial temp folder


def test_failure_after_start_leaves_no_partial_output(converted, tmp_path: Path) -> None:
    """A problem found only while converting (here: an export reference of another architecture)."""
    from nemotron3_super.conversion.commands import export_checkpoint
    from nemotron3_super.conversion.hf_io import CheckpointError

    with pytest.raises(CheckpointError, match=r"imported from a different architecture"):
        export_checkpoint(converted["tiny_nano"]["hf"], converted["tiny_super"]["megatron"], tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_cuda_without_gpu_says_why(converted, tmp_path: Path) -> None:
    from nemotron3_super.conversion.commands import import_checkpoint

    with pytest.raises(RuntimeError, match=r"device='cuda' \(--device cuda\) needs a CUDA GPU"):
        import_checkpoint(converted["tiny_super"]["hf"], tmp_path / "m", device="cuda")
    assert list(tmp_path.iterdir()) == []


def test_released_super_mapping_pairs_every_tensor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """At real scale on the meta device: 42,683 HF tensors, each paired with exactly one Megatron tensor
    and back, and every HF->Megatron transform yields the Megatron shape."""
    from nemotron3_super.architecture import super_120b_a12b
    from nemotron3_super.bridge.pairing import check_coverage, check_shapes, megatron_tensors, plan
    from nemotron3_super.conversion.megatron_io import build_model
    from nemotron3_super.conversion.process_groups import single_process_group

    arch = super_120b_a12b()
    with single_process_group(), torch.device("meta"):
        model = build_model(arch, torch.bfloat16)
    tensors = megatron_tensors(model)
    pairs = plan(tensors, arch)
    hf_shapes = dict(arch.hf_tensors())
    check_coverage(pairs, hf_shapes, "released Super config")
    hf_names = [h for p in pairs for h in p.hf]
    assert len(hf_names) == len(set(hf_names)) == len(hf_shapes) == 42_683
    assert len(pairs) == len(tensors)  # every Megatron tensor has exactly one pair
    check_shapes(pairs, tensors, model, hf_shapes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_compare_without_gpu_says_why(converted, capsys: pytest.CaptureFixture) -> None:
    from nemotron3_super.cli import main

    paths = converted["tiny_super"]
    assert main(["compare", "--hf-model-path", str(paths["hf"]), "--megatron-model-path",
                 str(paths["megatron"]), "--prompt", "Hello who are "]) == 2
    err = capsys.readouterr().err
    assert "compare needs a CUDA GPU" in err and "Triton kernel with no CPU fallback" in err
