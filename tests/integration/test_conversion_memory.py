"""Conversion memory does not grow with the model: import and export of a multi-shard checkpoint ~25x its
shard size stay within 2x the shard plus a fixed overhead (peak RSS of a child process, no timing).

The child first converts a tiny checkpoint (every code path imported, allocator warmed), takes its peak RSS
as the baseline, then converts the large one both ways; the growth of the peak is what conversion needed.
Holding the model in memory (the pre-streaming converter) grows it by >= the whole checkpoint (~400 MB)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # needs mamba-ssm (installed by .ci/env.sh): megatron-core's MambaMixer needs it to build

SHARD = 16 * 2**20  # bytes per HF shard (input, and output of the export)
OVERHEAD = 96 * 2**20  # fixed: allocator slack, DCP metadata and plans, the largest tensor's transient copies

CHILD = r"""
import json, resource, sys
from pathlib import Path
import nemotron3_super.conversion
from nemotron3_super.conversion.commands import export_checkpoint, import_checkpoint

work, shard = Path(sys.argv[1]), int(sys.argv[2])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB -> bytes
import_checkpoint(work / "tiny", work / "tiny-m")
export_checkpoint(work / "tiny", work / "tiny-m", work / "tiny-x", shard_bytes=shard)
base = peak()
import_checkpoint(work / "hf", work / "m")
after_import = peak()
export_checkpoint(work / "hf", work / "m", work / "x", shard_bytes=shard)
print(json.dumps({"base": base, "import": after_import, "export": peak()}))
"""


def memory_arch():  # noqa: ANN201 - a SuperArchitecture
    """Super's layer kinds and latent MoE + MTP at small width, 16 layers: ~470 MB BF16, 1,600+ tensors."""
    from nemotron3_super.architecture import super_120b_a12b

    real = super_120b_a12b()
    return dataclasses.replace(
        real, hidden_size=512, vocab_size=16384, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
        mamba_num_heads=16, mamba_head_dim=64, n_groups=4, ssm_state_size=64, n_routed_experts=96,
        num_experts_per_tok=4, moe_intermediate_size=512, moe_shared_expert_intermediate_size=1024,
        moe_latent_size=256, hybrid_override_pattern=real.hybrid_override_pattern[:16])


def test_peak_memory_is_bounded_by_the_shard_not_the_model(tmp_path: Path) -> None:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.fixtures import write_synthetic_checkpoint

    size = write_synthetic_checkpoint(memory_arch(), tmp_path / "hf", shard_bytes=SHARD)
    write_synthetic_checkpoint(tiny_super(), tmp_path / "tiny", shard_bytes=SHARD)
    shards = sorted((tmp_path / "hf").glob("*.safetensors"))
    largest = max(f.stat().st_size for f in shards)
    assert len(shards) >= 20 and size >= 20 * SHARD  # the model is many shards: holding it would show
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(SHARD)], capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    bound = 2 * largest + OVERHEAD
    growth = {step: rss[step] - rss["base"] for step in ("import", "export")}
    assert max(growth.values()) <= bound, (f"peak RSS grew by {growth} bytes over {rss['base']}; bound "
                                           f"2 x {largest} (largest shard) + {OVERHEAD} = {bound}; "
                                           f"checkpoint {size}")
    assert audit(tmp_path / "hf", tmp_path / "x").ok  # and the conversion was still bit-exact
    assert len(list((tmp_path / "x").glob("*.safetensors"))) >= 20  # export wrote shards of SHARD bytes
