"""Forward-pass comparison: transformers' NemotronH vs the Megatron model from a converted checkpoint.

Needs a CUDA GPU: megatron-core's Mamba mixer runs Triton kernels (there is no CPU path). Reports logits
agreement (relative L2, cosine, top-1) and, layer by layer, where the hidden states first diverge, which
is the question "loss way off" reports leave open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nemotron3_super.conversion.hf_io import HFCheckpoint

NO_GPU = ("compare needs a CUDA GPU: the Megatron forward runs megatron-core's Mamba mixer, whose SSD scan "
          "is a Triton kernel with no CPU fallback, and torch.cuda.is_available() is False here. "
          "Run it on a GPU machine (the weights themselves are already checked bit-exactly by `roundtrip`).")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class CompareReport:
    prompt: str
    tokens: int
    dtype: str
    rel_l2: float
    cosine: float
    top1_agreement: float
    layers: list[tuple[int, float]] = field(default_factory=list)  # (layer, rel-L2 of its output)
    first_divergent_layer: int | None = None

    def render(self) -> str:
        lines = [f"compare ({self.dtype}, {self.tokens} tokens of {self.prompt!r}): logits rel-L2 {self.rel_l2:.3e}, "
                 f"cosine {self.cosine:.6f}, top-1 agreement {self.top1_agreement:.1%}"]
        lines += [f"  layer {i:3d}: hidden-state rel-L2 {d:.3e}" for i, d in self.layers]
        if self.first_divergent_layer is not None:
            lines.append(f"  first layer past tolerance: {self.first_divergent_layer}")
        return "\n".join(lines)


def _tokens(folder: Path, prompt: str, vocab: int) -> torch.Tensor:
    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(folder, local_files_only=True)(prompt)["input_ids"]
    except (OSError, ValueError):  # tiny test folders have no tokenizer: bytes stand in for tokens
        ids = [b % vocab for b in prompt.encode()]
    return torch.tensor([ids], dtype=torch.long)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare(hf_model_path: str | Path, megatron_model_path: str | Path, prompt: str = "Hello who are ",
            dtype: str = "float32", layer_tol: float = 1e-3, spec_impl: str = "local") -> CompareReport:
    """Logits and per-layer hidden states of both models on ``prompt``; the Megatron model is built with
    ``spec_impl`` ("local", or "te" where Transformer Engine is installed)."""
    if not torch.cuda.is_available():
        raise RuntimeError(NO_GPU)
    from transformers import NemotronHForCausalLM

    from nemotron3_super.conversion.megatron_io import build_model, load_checkpoint, single_process_group

    ref, torch_dtype = HFCheckpoint(hf_model_path), _DTYPES[dtype]
    ids = _tokens(Path(hf_model_path), prompt, ref.arch.vocab_size).cuda()
    hf = NemotronHForCausalLM.from_pretrained(hf_model_path, dtype=torch_dtype, local_files_only=True).cuda().eval()
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    hf_logits, hf_hidden = out.logits.float(), out.hidden_states
    del hf
    with single_process_group():
        model = build_model(ref.arch, torch_dtype, spec_impl, "cuda" if spec_impl == "te" else "cpu",
                            use_mamba_mem_eff_path=False)
        load_checkpoint(model, Path(megatron_model_path))
        model = model.cuda().to(torch_dtype) if torch_dtype == torch.float32 else model.cuda()
        captured: dict[int, torch.Tensor] = {}
        hooks = [layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(
            k, (o[0] if isinstance(o, tuple) else o).detach())) for k, layer in enumerate(model.decoder.layers)]
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        with torch.no_grad():
            logits = model(ids, positions, attention_mask=None).float()
        for h in hooks:
            h.remove()
    flat_a, flat_b = logits.reshape(-1), hf_logits.reshape(-1)
    report = CompareReport(prompt, ids.shape[1], dtype, _rel_l2(logits, hf_logits),
                           torch.nn.functional.cosine_similarity(flat_a.double(), flat_b.double(), dim=0).item(),
                           (logits.argmax(-1) == hf_logits.argmax(-1)).float().mean().item())
    for k in sorted(captured):  # Megatron [s, b, h] after layer k  vs  HF hidden_states[k + 1] [b, s, h]
        theirs = hf_hidden[k + 1] if k + 1 < len(hf_hidden) - 1 else None
        if theirs is None:
            break  # HF's last entry is after norm_f; compare only inner layers
        report.layers.append((k, _rel_l2(captured[k].transpose(0, 1).float(), theirs.float())))
    report.first_divergent_layer = next((k for k, d in report.layers if d > layer_tol), None)
    return report
