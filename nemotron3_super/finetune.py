"""``torchrun --nproc-per-node=N -m nemotron3_super.finetune [--peft lora] [--dry-run] [key=value ...]``.

Full SFT (:func:`nemotron3_super.recipes.nemotron3_super_sft_config`) or, with ``--peft lora``,
LoRA (:func:`nemotron3_super.recipes.nemotron3_super_lora_config`) on SQuAD; ``--squad-jsonl PATH``
reads a local SQuAD-format file. Base weights: ``checkpoint.pretrained_checkpoint=<Megatron dir>``.
"""

from __future__ import annotations

import sys

from nemotron3_super.launch import main

if __name__ == "__main__":
    sys.exit(main("finetune"))
