"""``torchrun --nproc-per-node=N -m nemotron3_super.pretrain [--dry-run] [key=value ...]``.

Pretrains Nemotron 3 Super with :func:`nemotron3_super.recipes.nemotron3_super_pretrain_config`
(``--nvfp4``: the NVFP4 variant; ``--data-blend JSON``: real data, else mock). Dotted overrides
use the host's syntax, e.g. ``model.hybrid_override_pattern="MEME*ME" model.num_layers=7``.
"""

from __future__ import annotations

import sys

from nemotron3_super.launch import main

if __name__ == "__main__":
    sys.exit(main("pretrain"))
