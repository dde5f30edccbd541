"""Every command on the upstream Nemotron 3 Super page works here with only the script swapped for ours.

The page is ``tests/data/upstream-nemotron3-super.md`` (a copy of the published page). Its commands are
read from its bash blocks, variables filled with a tiny checkpoint and temporary folders, flags kept as
written. Training commands run with ``--dry-run --gpus N`` (N from ``--nproc-per-node``: the layout
check, memory plan and config validation, no GPU); import, export and roundtrip run for real on CPU as
written (8 torchrun ranks on gloo); compare needs a GPU; every command's flags must parse.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from launching import dry_run, torchrun

PAGE = Path(__file__).resolve().parents[1] / "data" / "upstream-nemotron3-super.md"
# upstream script -> our module (the only thing swapped)
SCRIPTS = {
    "examples/conversion/convert_checkpoints.py": ["nemotron3_super.cli", "convert"],
    "examples/conversion/hf_megatron_roundtrip_multi_gpu.py": ["nemotron3_super.cli", "roundtrip"],
    "examples/conversion/compare_hf_and_megatron/compare.py": ["nemotron3_super.cli", "compare"],
    "examples/models/nemotron_3/pretrain_nemotron_3_super.py": ["nemotron3_super.pretrain"],
    "examples/models/nemotron_3/finetune_nemotron_3_super.py": ["nemotron3_super.finetune"],
}


def page_commands() -> list[tuple[str, int, list[str]]]:
    """(section heading, torchrun --nproc-per-node, script + arguments) for each command on the page."""
    out, heading, block = [], "", None
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if block is None and line.startswith("#"):
            heading = line.lstrip("# ").strip()
        elif block is None and line.startswith("```bash"):
            block = []
        elif block is not None and line.startswith("```"):
            for command in "\n".join(block).replace("\\\n", " ").splitlines():
                if command.startswith("torchrun"):
                    words = shlex.split(command)
                    nproc = int(next(w.split("=")[1] for w in words if w.startswith("--nproc-per-node")))
                    out.append((heading, nproc, [w for w in words[1:] if not w.startswith("--nproc-per-node")]))
            block = None
        elif block is not None:
            block.append(line)
    return out


COMMANDS = page_commands()


def test_the_page_has_every_documented_command() -> None:
    assert [h for h, _, _ in COMMANDS] == [
        "Import HF → Megatron", "Export Megatron → HF", "Roundtrip Testing", "Compare HF and Megatron Outputs",
        "Pretraining with Real Data", "Pretraining with Mock Data", "Full Parameter Fine-Tuning",
        "LoRA Fine-Tuning"]


def ours(words: list[str], values: dict[str, str]) -> list[str]:
    """The page's command with the script swapped and $VARIABLES filled in."""
    script, *args = words
    filled = [re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], a) for a in args]
    return ["-m", *SCRIPTS[script], *filled]


@pytest.fixture(scope="module")
def values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("upstream")
    blend = root / "blend.json"
    prefix = str(root / "data" / "text_document")
    (root / "data").mkdir()
    for suffix in (".bin", ".idx"):  # a dry run checks that the blend's files exist; it reads none
        Path(prefix + suffix).write_bytes(b"")
    blend.write_text(json.dumps({"train": [1.0, prefix], "valid": [1.0, prefix], "test": [1.0, prefix]}))
    return {"HF_MODEL": str(root / "hf"), "MEGATRON_PATH": str(root / "megatron"),
            "OUTPUT_PATH": str(root / "hf-out"), "BLEND_PATH": str(blend), "CHECKPOINT_DIR": str(root / "ckpt")}


@pytest.mark.parametrize("heading,nproc,words", COMMANDS, ids=[h for h, _, _ in COMMANDS])
def test_flags_parse_as_written(heading: str, nproc: int, words: list[str], values: dict[str, str]) -> None:
    argv = ours(words, values)[2:]
    module = ours(words, values)[1]
    if module == "nemotron3_super.cli":
        from nemotron3_super.cli import build_parser

        build_parser().parse_args(argv)
    else:
        from nemotron3_super.launch import _parser

        _parser(module.rsplit(".", 1)[1]).parse_intermixed_args(argv)


TRAINING = [c for c in COMMANDS if "training" in c[0].lower() or "tuning" in c[0].lower()]


@pytest.mark.slow
@pytest.mark.parametrize("heading,nproc,words", TRAINING, ids=[h for h, _, _ in TRAINING])
def test_training_commands_dry_run(heading: str, nproc: int, words: list[str], values: dict[str, str],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """As written, on ``nproc`` GPUs (planned): the layout adapts where the page did not set it. A dry run
    checks what the first minute of a launch needs: the pretrained checkpoint is a folder with an iteration
    in it (the host's, so the recipe's model stays), and the page's wandb logging finds a ``wandb`` package (a
    stand-in on the path: a dry run only looks it up). In this process, through the launch module's ``main``
    (the docs test runs dry runs as separate processes; here that would import the host four more times)."""
    megatron = tmp_path / "megatron"
    (megatron / "iter_0000000").mkdir(parents=True)
    (tmp_path / "site" / "wandb").mkdir(parents=True)
    (tmp_path / "site" / "wandb" / "__init__.py").write_text("raise ImportError('stand-in: not for import')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _, module, *argv = ours(words, {**values, "MEGATRON_PATH": str(megatron)})
    mode = module.rsplit(".", 1)[1]
    assert module == f"nemotron3_super.{mode}" and mode in ("pretrain", "finetune"), module
    code, out, err = dry_run(mode, [*argv, "--dry-run", "--gpus", str(nproc)], capsys, monkeypatch)
    assert code == 0, f"{heading}: {err[-3000:]}"
    assert "GPUs" in out


CONVERSION = [c for c in COMMANDS if c[2][0] in ("examples/conversion/convert_checkpoints.py",
                                                  "examples/conversion/hf_megatron_roundtrip_multi_gpu.py")]


_CONVERSION_WORKER = """
import json, sys
from nemotron3_super.cli import main
for heading, argv in json.loads(sys.argv[1]):  # the first command makes torchrun's group; the others reuse it
    code = main(argv)
    if code:
        sys.exit(f"{heading}: exit {code}")
"""


@pytest.mark.slow
def test_conversion_commands_run_as_written(tmp_path: Path) -> None:
    """Import, export and roundtrip exactly as the page writes them (torchrun, 8 ranks, TP 1 / EP 8), on a tiny
    Super-shaped checkpoint with 8 experts, on CPU (gloo): the export is bit-identical to the input and the
    roundtrip reports IDENTICAL. (Compare needs a GPU; its flags are checked above.) The three commands run in
    one launch of 8 ranks, each through the CLI's ``main`` with the page's arguments, so the host is imported
    once per rank instead of three times (24 imports of it on 2 cores took most of this test's time)."""
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    assert [h for h, _, _ in CONVERSION] == ["Import HF → Megatron", "Export Megatron → HF", "Roundtrip Testing"]
    assert {nproc for _, nproc, _ in CONVERSION} == {8}  # one launch serves all three
    assert tiny_super().n_routed_experts == 8  # EP 8 as on the page
    hf = write_tiny_checkpoint(tiny_super(), tmp_path / "hf")
    values = {"HF_MODEL": str(hf), "MEGATRON_PATH": str(tmp_path / "megatron"), "OUTPUT_PATH": str(tmp_path / "out")}
    commands = []
    for heading, _, words in CONVERSION:
        _, module, *argv = ours(words, values)  # "-m", "nemotron3_super.cli", the page's arguments
        assert module == "nemotron3_super.cli"
        commands.append((heading, argv))
    worker = tmp_path / "worker.py"
    worker.write_text(_CONVERSION_WORKER)
    proc = torchrun(8, str(worker), json.dumps(commands), timeout=1500)
    assert proc.stdout.count("result: IDENTICAL") == 1, proc.stdout[-2000:]  # the roundtrip, from rank 0
    report = audit(hf, tmp_path / "out")
    assert report.ok and report.tensors == tiny_super().hf_tensor_count(), report.render()
