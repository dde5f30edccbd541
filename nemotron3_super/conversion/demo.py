"""``nemotron3-super demo``: the whole conversion story on a tiny Super-shaped model, on CPU, in seconds.

transformers builds a tiny Super (Mamba-2, latent MoE, attention, the MTP block, FP32 router biases),
it is imported to a Megatron torch_dist checkpoint, exported back, and every tensor is audited bit-exactly.
With a GPU the forward passes are compared too.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

DEMO_TMP_PREFIX = "nemotron3-super-demo-"


def run_demo(work_dir: str | Path | None = None, echo=print) -> int:  # noqa: ANN001
    """Returns the exit status: 0 when every tensor came back bit-exact (and compare passed, if run).
    A temp folder it made itself is removed when the demo stops with an error (it holds nothing
    worth keeping then); a finished run keeps its files, a mismatch included, for inspection."""
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return _demo(Path(work_dir), echo)
    tmp = Path(tempfile.mkdtemp(prefix=DEMO_TMP_PREFIX))
    try:
        return _demo(tmp, echo)
    except BaseException:
        if tmp.parent == Path(tempfile.gettempdir()) and tmp.name.startswith(DEMO_TMP_PREFIX):  # ours only
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _demo(tmp: Path, echo) -> int:  # noqa: ANN001
    start = time.perf_counter()
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.commands import export_checkpoint, import_checkpoint
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    arch = tiny_super()
    hf_in, megatron, hf_out = tmp / "hf-original", tmp / "megatron", tmp / "hf-exported"
    echo(f"[1/4] tiny Super-shaped HF checkpoint (pattern {arch.hybrid_override_pattern}, MTP "
         f"{arch.mtp_hybrid_override_pattern}, latent {arch.moe_latent_size}) -> {hf_in}")
    write_tiny_checkpoint(arch, hf_in)
    echo("[2/4] " + import_checkpoint(hf_in, megatron, overwrite=True).render("convert import"))
    echo("[3/4] " + export_checkpoint(hf_in, megatron, hf_out, overwrite=True).render("convert export"))
    report = audit(hf_in, hf_out)
    echo("[4/4] " + report.render())
    status = 0 if report.ok else 1
    if torch.cuda.is_available():
        from nemotron3_super.conversion.compare import compare

        result = compare(hf_in, megatron)
        echo(result.render())
        status |= int(result.rel_l2 > 1e-4)
    else:
        echo("compare: skipped, it needs a CUDA GPU (Mamba's Megatron forward is Triton-only); "
             f"run `nemotron3-super compare --hf-model-path {hf_in} --megatron-model-path {megatron}` on one")
    echo(f"demo {'passed' if status == 0 else 'FAILED'} in {time.perf_counter() - start:.1f} s; files kept in {tmp}")
    return status
