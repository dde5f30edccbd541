"""Full SFT and LoRA from a ``convert import`` checkpoint, through the launch module and the host's loop.

    source .whl/prelude.sh; python3 -m pytest tests/gpu/test_finetune.py -q -s

One GPU. The base model is tiny Super (latent MoE + MTP) written with transformers, with a word-level
tokenizer of its 256-token vocabulary in the same folder, imported with ``convert import``; the data is a
local SQuAD-format JSONL of templated facts (no Hub). The recipe takes the model's shape from the
checkpoint. Both runs train 20 iterations on unpacked rows (packed rows need TE's THD attention; the GPU
machine has no TE) with a higher learning rate than the 120B recipe, so that the loss visibly falls.

LoRA then goes the way a user's adapter goes: the host writes its HF adapter at the save
(``checkpoint.also_save_hf_checkpoint``, through our bridge), ``convert export-lora`` turns it into a PEFT
folder (Mamba ``out_proj`` and MTP adapters merged into a copy of the base, which PEFT refuses), PEFT
loads it on transformers' NemotronH, and the logits change and stay finite.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from gpu_launch import run_training

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ITERS = 20
COUNTRIES = ["France", "Japan", "Peru", "Kenya", "Norway", "Chile", "Egypt", "India", "Spain", "Canada",
             "Ghana", "Nepal", "Oman", "Cuba", "Fiji", "Iran"]
CITIES = ["Paris", "Tokyo", "Lima", "Nairobi", "Oslo", "Santiago", "Cairo", "Delhi", "Madrid", "Ottawa",
          "Accra", "Kathmandu", "Muscat", "Havana", "Suva", "Tehran"]


def _squad_rows(n: int = 160) -> list[dict]:
    rng, rows = random.Random(0), []
    for i in range(n):
        k = rng.randrange(len(COUNTRIES))
        context = f"The capital of {COUNTRIES[k]} is {CITIES[k]} . It is a large city ."
        rows.append({"id": str(i), "title": COUNTRIES[k], "context": context,
                     "question": f"What is the capital of {COUNTRIES[k]} ?",
                     "answers": {"text": [CITIES[k]], "answer_start": [context.index(CITIES[k])]}})
    return rows


def _write_word_tokenizer(folder: Path, texts: list[str], vocab_size: int) -> None:
    """A word-level fast tokenizer that fits the tiny model's vocabulary (saved beside config.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    assert tok.get_vocab_size() <= vocab_size
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(folder)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("finetune")
    arch = tiny_super()
    hf = write_tiny_checkpoint(arch, root / "hf")
    rows = _squad_rows()
    (root / "squad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [f"Context: {r['context']} Question: {r['question']} Answer: {r['answers']['text'][0]}" for r in rows]
    _write_word_tokenizer(hf, texts, arch.vocab_size)
    import_checkpoint(hf, root / "megatron")
    return {"root": root, "hf": hf, "megatron": root / "megatron", "squad": root / "squad.jsonl"}


def _finetune(base: dict[str, Path], name: str, extra: list[str]) -> tuple[dict[int, float], str]:
    args = ["--squad-jsonl", str(base["squad"]), "--tokenizer", str(base["hf"]),
            f"checkpoint.pretrained_checkpoint={base['megatron']}",  # the model's shape comes from here
            "model.tensor_model_parallel_size=1", "model.expert_model_parallel_size=1",
            "model.sequence_parallel=False", "model.use_mamba_mem_eff_path=False",
            "model.seq_length=64", "dataset.seq_length=64", "dataset.enable_offline_packing=False",
            "dataset.offline_packing_specs=null",
            f"train.train_iters={ITERS}", "train.global_batch_size=8", "train.micro_batch_size=2",
            "scheduler.lr_warmup_iters=2", "validation.eval_interval=10", "validation.eval_iters=2",
            "logger.log_interval=1", f"checkpoint.save={base['root'] / name}", f"checkpoint.save_interval={ITERS}",
            f"checkpoint.load={base['root'] / name}", "checkpoint.async_save=False", *extra]
    return run_training(base["root"], "nemotron3_super.finetune", args, log_name=name)


def _check_training(losses: dict[int, float], log: str, base: dict[str, Path], what: str) -> None:
    print(f"\n[{torch.cuda.get_device_name()}] {what} losses: " + " ".join(f"{losses[i]:.3f}" for i in sorted(losses)))
    assert sorted(losses) == list(range(1, ITERS + 1)), f"logged iterations: {sorted(losses)}"
    assert all(math.isfinite(x) for x in losses.values())
    assert str(base["megatron"]) in log and "successfully loaded checkpoint" in log.lower(), (
        "the converted checkpoint was not loaded:\n" + log[-4000:])
    early, late = sum(losses[i] for i in range(1, 4)) / 3, sum(losses[i] for i in range(ITERS - 2, ITERS + 1)) / 3
    assert late < early - 0.5, f"{what}: loss did not fall: first 3 mean {early:.3f}, last 3 mean {late:.3f}"


def test_full_sft_from_converted_checkpoint(base) -> None:
    losses, log = _finetune(base, "sft", ["optimizer.lr=3e-3", "optimizer.min_lr=3e-4"])
    _check_training(losses, log, base, "full SFT")
    assert (base["root"] / "sft" / f"iter_{ITERS:07d}").is_dir()


def test_lora_adapter_trains_exports_and_loads_in_peft(base) -> None:
    from peft import PeftModel
    from transformers import NemotronHForCausalLM

    from nemotron3_super.cli import main

    losses, log = _finetune(base, "lora", ["--peft", "lora", "optimizer.lr=1e-2", "optimizer.min_lr=1e-3",
                                           "checkpoint.also_save_hf_checkpoint=True",
                                           f"checkpoint.hf_source_path={base['hf']}"])
    _check_training(losses, log, base, "LoRA")
    host_adapter = base["root"] / "lora" / f"iter_{ITERS:07d}" / "hf"
    assert (host_adapter / "adapter_model.safetensors").is_file(), sorted(p.name for p in host_adapter.parent.iterdir())
    peft_dir, merged = base["root"] / "peft_adapter", base["root"] / "merged_base"
    assert main(["convert", "export-lora", "--hf-model", str(base["hf"]), "--host-adapter", str(host_adapter),
                 "--adapter-path", str(peft_dir), "--merged-base", str(merged)]) == 0

    ids = torch.tensor([[5, 9, 17, 3, 22, 41, 8, 12]], device="cuda")
    model = NemotronHForCausalLM.from_pretrained(merged, dtype=torch.float32, local_files_only=True).cuda().eval()
    with torch.no_grad():
        base_logits = model(ids).logits
    model = PeftModel.from_pretrained(model, str(peft_dir)).eval()
    with torch.no_grad():
        adapted = model(ids).logits
    change = ((adapted - base_logits).norm() / base_logits.norm()).item()
    print(f"[{torch.cuda.get_device_name()}] PEFT adapter: logits rel change {change:.3e}")
    assert torch.isfinite(adapted).all() and change > 1e-4
