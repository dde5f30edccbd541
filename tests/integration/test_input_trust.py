"""Inputs are validated, not trusted, and every failure is one line (issue #12, cases 5-9)."""

from __future__ import annotations

import errno
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # builds and converts a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.fixtures import PRESETS, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("trust")
    hf = write_tiny_checkpoint(PRESETS["tiny_super"](), root / "hf")
    import_checkpoint(hf, root / "megatron")
    return {"hf": hf, "megatron": root / "megatron"}


def _rewrite_header(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    """Copy an HF folder, passing its safetensors header through ``edit`` (data bytes unchanged)."""
    shutil.copytree(src, dst)
    file = dst / "model.safetensors"
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


def _alias(header: dict) -> None:  # case 5: layer 0's in_proj reads layer 2's bytes
    header["backbone.layers.0.mixer.in_proj.weight"]["data_offsets"] = \
        header["backbone.layers.2.mixer.in_proj.weight"]["data_offsets"]


def _complex(header: dict) -> None:
    meta = header["backbone.norm_f.weight"]
    meta["dtype"], meta["shape"] = "C64", [meta["shape"][0] // 4]


@pytest.mark.parametrize("edit, needle", [
    (_alias, r"tensor 'backbone.layers.(0|2).mixer.in_proj.weight' starts at byte \d+ and overlaps the previous"),
    (_complex, r"tensor 'backbone.norm_f.weight' has dtype 'C64', which this converter does not know"),
], ids=["aliased-offsets", "unknown-dtype"])
def test_safetensors_header_is_validated(tiny, tmp_path: Path, edit, needle: str) -> None:  # noqa: ANN001
    """The aliased file converts with wrong weights and audits IDENTICAL if the header is trusted."""
    from nemotron3_super.conversion.commands import import_checkpoint, roundtrip
    from nemotron3_super.conversion.hf_io import CheckpointError

    bad = _rewrite_header(tiny["hf"], tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=needle):
        import_checkpoint(bad, tmp_path / "out")
    with pytest.raises(CheckpointError, match=needle):
        roundtrip(bad)  # the audit reads through the same validated parser
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_float16_tensor_in_bfloat16_checkpoint_round_trips_exactly(tiny, tmp_path: Path) -> None:
    """Case 6a: export reads the FP16 tensor back in FP16 (not through the BF16 model dtype)."""
    from safetensors.torch import load_file, save_file

    from nemotron3_super.conversion.commands import roundtrip

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny["hf"], mixed)
    tensors = load_file(str(mixed / "model.safetensors"))
    name = "backbone.layers.0.mixer.norm.weight"
    tensors[name] = (torch.randn(tensors[name].shape) * 1e-3 + 1).to(torch.float16)  # not exact in BF16
    assert not torch.equal(tensors[name].to(torch.bfloat16).to(torch.float16), tensors[name])
    save_file(tensors, str(mixed / "model.safetensors"), metadata={"format": "pt"})
    report, _ = roundtrip(mixed, work_dir=tmp_path)
    assert report.ok, report.render()


def test_config_dtype_contradicting_the_tensors_is_refused_up_front(tiny, tmp_path: Path) -> None:
    """Case 6b: torch_dtype float16 with BF16 tensors is named before any output exists."""
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.hf_io import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(tiny["hf"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["torch_dtype"] = "float16"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: torch_dtype=float16 but the 16-bit tensors are BF16"):
        import_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_leaves_remote_code_out_unless_asked(tiny, tmp_path: Path) -> None:
    """Case 7."""
    from nemotron3_super.conversion.commands import export_checkpoint

    ref = tmp_path / "ref"
    shutil.copytree(tiny["hf"], ref)
    (ref / "modeling_evil.py").write_text("import os  # would run under trust_remote_code\n")
    config = json.loads((ref / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (ref / "config.json").write_text(json.dumps(config))
    (ref / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["x.T", None]}, "a": 1}))
    report = export_checkpoint(ref, tiny["megatron"], tmp_path / "plain")
    out = tmp_path / "plain"
    assert not (out / "modeling_evil.py").exists() and "auto_map" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"a": 1}
    assert "remote code not copied (pass --copy-remote-code to copy it): modeling_evil.py" in report.render("x")
    export_checkpoint(ref, tiny["megatron"], tmp_path / "asked", copy_remote_code=True)
    assert (tmp_path / "asked" / "modeling_evil.py").is_file()
    assert json.loads((tmp_path / "asked" / "config.json").read_text())["auto_map"] == config["auto_map"]


@pytest.mark.parametrize("how, needle", [
    ("missing", r"__0_0.distcp: missing \(the checkpoint's metadata lists it"),
    ("truncated", r"__0_0.distcp: truncated \(1000 bytes, the checkpoint's metadata needs \d+\)"),
    ("meta", r"nemotron3_super.json: corrupt \("),
])
def test_broken_megatron_checkpoint_is_one_line(tiny, tmp_path: Path, capsys, how: str, needle: str) -> None:
    """Cases 8 and 9: a missing / truncated .distcp file, a corrupt nemotron3_super.json."""
    import re

    from nemotron3_super.cli import main

    meg = tmp_path / "meg"
    shutil.copytree(tiny["megatron"], meg)
    data = meg / "iter_0000000" / "__0_0.distcp"
    if how == "missing":
        data.unlink()
    elif how == "truncated":
        data.write_bytes(data.read_bytes()[:1000])
    else:
        (meg / "nemotron3_super.json").write_text("{not json")
    capsys.readouterr()
    assert main(["convert", "export", "--hf-model", str(tiny["hf"]), "--megatron-path", str(meg),
                 "--hf-path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(needle, err), err
    assert not (tmp_path / "out").exists()


def test_checkpoint_exception_becomes_one_line_naming_file_and_cause(tmp_path: Path) -> None:
    """Case 8: torch's CheckpointException (a BaseException) as the writer raises it for a full disk."""
    from torch.distributed.checkpoint import CheckpointException

    from nemotron3_super.failures import describe

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "__0_0.distcp"))
    exc = CheckpointException("write", {0: (full, [])})
    assert not isinstance(exc, Exception)
    assert describe(exc, tmp_path) == (f"{tmp_path}: checkpoint write failed on rank 0: no space left on device "
                                       f"while writing {tmp_path / '__0_0.distcp'}")


@pytest.mark.parametrize("config, needle", [
    ([1, 2], r"config.json: a JSON list, expected an object of config fields"),
    ({"quantization_config": "fp8"},
     r"config.json: quantization_config='fp8' is a str, expected an object"),
], ids=["list", "quantization-string"])
def test_malformed_config_is_named(tiny, tmp_path: Path, capsys, config, needle: str) -> None:  # noqa: ANN001
    """Case 9: a config.json that is a list; a real config whose quantization_config is a string."""
    import re

    from nemotron3_super.cli import main

    shutil.copytree(tiny["hf"], tmp_path / "hf")
    if isinstance(config, dict):
        config = {**json.loads((tmp_path / "hf" / "config.json").read_text()), **config}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert main(["convert", "import", "--hf-model", str(tmp_path / "hf"), "--megatron-path",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(needle, err), err
