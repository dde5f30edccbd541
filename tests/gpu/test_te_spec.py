"""The Transformer Engine layer spec on one GPU: tiny Super built, converted, compared and trained.

    source .whl/prelude.sh; source .tekit/prelude.sh; python3 -m pytest tests/gpu/test_te_spec.py -q -s

(carry=[".whl", ".tekit"]; the TE kit is built by ../shared/gpu/build-te-kit.sh). Skipped with the reason where
TE or a GPU is absent. The provider's settings must follow what is installed: the kit has TE but neither
Apex nor flash-attn, the case that first failed (gradient-accumulation fusion needing Apex, the attention
backend pinned to flash-attn).

Checked: the TE spec builds with the provider's defaults; ``convert import``/``export`` through the TE spec's
parameter names (fused ``layer_norm_weight``s, grouped ``weight{e}``) are bit-exact; a checkpoint written with
the TE-free spec loads into the TE spec and back (both store the TE keys); forward agrees with the TE-free
spec on the same weights and with transformers (bf16 cosine >= 0.999; "float32" within 2e-3, since TE runs
float32 GEMMs in TF32: the test prints the local spec's own TF32-vs-FP32 difference beside it); 30 training steps lower the loss; FP8 (current scaling, Hopper) trains 50 steps
to within 5% of BF16's final loss.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import pytest
import torch

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None and \
    importlib.util.find_spec("transformer_engine.pytorch") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"),
    pytest.mark.skipif(not HAVE_TE, reason="needs Transformer Engine (carry the TE kit: .tekit/prelude.sh)"),
]
PROMPT = "Hello who are you, and what is a hybrid Mamba model?"
BATCH, SEQ = 4, 64


def _fp8_tiny():
    """tiny Super with every GEMM dimension a multiple of 16 (TE's FP8 GEMMs need it): 16 Mamba heads of 8
    give in_proj 2*128 + 2*2*16 + 16 = 336 rows (tiny_super's 8 heads of 16 give 328)."""
    from nemotron3_super.architecture import tiny_super

    return dataclasses.replace(tiny_super(), mamba_num_heads=16, mamba_head_dim=8)


def _model(spec: str, arch=None, **overrides) -> torch.nn.Module:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.provider import SuperModelProvider

    provider = SuperModelProvider.from_architecture(arch or tiny_super(), spec_impl=spec,
                                                    use_mamba_mem_eff_path=False, **overrides)
    provider.finalize()
    return provider.provide().cuda().bfloat16()


def _batch(vocab: int = 256, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=gen).cuda()
    positions = torch.arange(SEQ, device="cuda").expand(BATCH, SEQ)
    return tokens[:, :-1].contiguous(), positions, tokens[:, 1:].contiguous()


def _train(model: torch.nn.Module, steps: int, lr: float = 5e-3, batches: int = 1) -> list[float]:
    """AdamW steps cycling through ``batches`` fixed random batches; the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = [_batch(seed=i) for i in range(batches)]
    losses = []
    for step in range(steps):
        tokens, positions, labels = data[step % batches]
        optimizer.zero_grad(set_to_none=True)
        loss = model(tokens, positions, None, labels=labels).float().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny HF checkpoint, imported once with each spec."""
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.commands import import_checkpoint
    from nemotron3_super.conversion.fixtures import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("te-spec")
    hf = write_tiny_checkpoint(tiny_super(), root / "hf")
    import_checkpoint(hf, root / "local")  # the TE-free spec, on CPU
    import_checkpoint(hf, root / "te", spec_impl="te", device="cuda")
    return {"hf": hf, "local": root / "local", "te": root / "te"}


@pytest.mark.parametrize(("written", "read"), [("te", "te"), ("local", "te"), ("te", "local")],
                         ids=["te-te", "local-written-read-by-te", "te-written-read-by-local"])
def test_checkpoints_convert_bit_exact_across_specs(converted, tmp_path: Path, written: str, read: str) -> None:
    from nemotron3_super.conversion.audit import audit
    from nemotron3_super.conversion.commands import export_checkpoint

    out = tmp_path / "hf"
    export_checkpoint(converted["hf"], converted[written], out, spec_impl=read, device="cuda")
    report = audit(converted["hf"], out)
    print(f"\n[{torch.cuda.get_device_name()}] written with {written}, read with {read}: " + report.render())
    assert report.ok and report.mtp_tensors > 0 and report.fp32_tensors, report.render()


# TE computes float32 GEMMs in TF32 (10-bit mantissa), so "float32" through TE agrees to ~1e-3, not 1e-4;
# the local spec run with torch's TF32 matmuls shows the same size of difference against itself in float32.
TE_FP32_TOL = 2e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_te_forward_agrees_with_the_local_spec(converted, dtype: str) -> None:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.megatron_io import build_model, load_checkpoint, single_process_group

    torch_dtype = getattr(torch, dtype)
    tokens, positions, _ = _batch()
    logits = {}
    with single_process_group():
        for spec, tf32 in (("local", False), ("local", True), ("te", False)):
            if tf32 and dtype != "float32":
                continue
            model = build_model(tiny_super(), torch_dtype, spec, "cuda" if spec == "te" else "cpu",
                                use_mamba_mem_eff_path=False)
            load_checkpoint(model, converted["te"])  # the TE-written checkpoint, into both specs
            model = model.cuda().to(torch_dtype)
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                with torch.no_grad():
                    logits[spec + "-tf32" * tf32] = model(tokens, positions, attention_mask=None).float()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
            del model

    def rel(x: str, y: str) -> float:
        return ((logits[x] - logits[y]).norm() / logits[y].norm()).item()

    a, b = logits["te"].reshape(-1), logits["local"].reshape(-1)
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()
    tf32 = f"; local with TF32 matmuls vs local: {rel('local-tf32', 'local'):.3e}" if dtype == "float32" else ""
    print(f"\n[{torch.cuda.get_device_name()}] TE vs local spec, {dtype}: rel-L2 {rel('te', 'local'):.3e}, "
          f"cosine {cos:.6f}{tf32}")
    if dtype == "float32":
        assert rel("te", "local") <= TE_FP32_TOL
    else:
        assert cos >= 0.999


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_te_spec_compares_with_transformers(converted, dtype: str) -> None:
    from nemotron3_super.conversion.compare import compare

    report = compare(converted["hf"], converted["te"], prompt=PROMPT, dtype=dtype, spec_impl="te")
    print(f"\n[{torch.cuda.get_device_name()}] TE spec vs transformers: " + report.render())
    if dtype == "float32":  # TF32 inside TE: see TE_FP32_TOL
        assert report.rel_l2 <= TE_FP32_TOL, report.render()
    else:
        assert report.cosine >= 0.999, report.render()


def test_te_spec_builds_with_settings_that_follow_the_installation(model_parallel) -> None:
    from megatron.core.transformer.enums import AttnBackend

    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.installed import have_apex_wgrad_fusion, have_flash_attn
    from nemotron3_super.provider import SuperModelProvider

    model_parallel(tp=1, ep=1)
    provider = SuperModelProvider.from_architecture(tiny_super(), use_mamba_mem_eff_path=False)  # spec "auto"
    provider.finalize()
    assert provider.transformer_impl == "transformer_engine", "spec_impl='auto' must pick TE where TE runs"
    assert provider.gradient_accumulation_fusion is have_apex_wgrad_fusion()
    assert provider.attention_backend == (AttnBackend.flash if have_flash_attn() else AttnBackend.auto)
    model = provider.provide().cuda().bfloat16()
    names = {n for n, _ in model.named_parameters()}
    assert "decoder.layers.0.mixer.in_proj.layer_norm_weight" in names  # fused pre-norm (TE spec)
    assert "decoder.layers.4.self_attention.linear_qkv.layer_norm_weight" in names
    assert "decoder.layers.1.mlp.experts.linear_fc1.weight0" in names  # TE grouped experts
    losses = _train(model, 1)
    assert math.isfinite(losses[0])
    print(f"\n[{torch.cuda.get_device_name()}] TE spec: {len(names)} parameters, attention backend "
          f"{provider.attention_backend.name}, gradient_accumulation_fusion={provider.gradient_accumulation_fusion}")


def test_te_spec_trains_30_steps(model_parallel) -> None:
    model_parallel(tp=1, ep=1)
    losses = _train(_model("te"), 30)
    print(f"\n[{torch.cuda.get_device_name()}] TE spec bf16 losses: " + " ".join(f"{x:.3f}" for x in losses))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.xfail(strict=True, reason="open: on an H200 (TE 2.20.2, 2026-12-01) FP8 current scaling ended 28% "
                   "above BF16 (4.18 vs 3.26, 8 batches x 50 steps, tiny Super widths 64-336); a pass here "
                   "means it is fixed and this mark must go")
def test_fp8_trains_within_5_percent_of_bf16(model_parallel) -> None:
    """Hopper FP8 (TE current scaling) with the published plan's BF16 exclusions vs BF16, same init."""
    from nemotron3_super.precision import unsupported_reason

    reason = unsupported_reason("fp8")
    if reason:
        pytest.skip(f"FP8 cannot run here: {reason}")
    model_parallel(tp=1, ep=1, seed=7)
    bf16 = _model("te", _fp8_tiny())
    state = {k: v.clone() for k, v in bf16.state_dict().items()
             if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}  # weights only, no FP8 metadata
    fp8 = _model("te", _fp8_tiny(), precision="fp8", fp8_scaling="current")
    missing, unexpected = fp8.load_state_dict(state, strict=False)
    assert not [k for k in missing if not k.endswith("_extra_state")], missing
    # 8 batches cycled at a moderate rate: the loss falls but stays far from 0, where relative
    # differences would mean nothing (a single repeated batch drives both to ~0.03 and 10% apart)
    bf16_losses = _train(bf16, 50, lr=1e-3, batches=8)
    fp8_losses = _train(fp8, 50, lr=1e-3, batches=8)
    end_bf16, end_fp8 = sum(bf16_losses[-8:]) / 8, sum(fp8_losses[-8:]) / 8  # one pass over the 8 batches
    print(f"\n[{torch.cuda.get_device_name()}] 50 steps over 8 batches: last-pass mean loss bf16 {end_bf16:.4f}, "
          f"fp8 current scaling {end_fp8:.4f} ({(end_fp8 / end_bf16 - 1) * 100:+.2f}%); first step "
          f"{bf16_losses[0]:.4f} / {fp8_losses[0]:.4f}")
    assert all(math.isfinite(x) for x in fp8_losses)
    assert end_fp8 < 0.9 * fp8_losses[0], "FP8 run did not learn"
    assert abs(end_fp8 - end_bf16) <= 0.05 * end_bf16
