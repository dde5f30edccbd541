"""The parts of benchmarks/convert.py that decide what its figures mean: the pair of checkpoints (~4x apart),
the real-shape slice, the disk measurement, the profile summary, argument checks and the cleanup's guard."""

from __future__ import annotations

import cProfile
import sys
from pathlib import Path

import pytest
from bench_scripts import load

inputs = load("convert_inputs")
convert = load("convert")


@pytest.mark.parametrize(("hidden", "small", "large"), [(1024, 8, 77), (512, 8, 88)])
def test_the_documented_pairs_are_about_4x_apart(hidden: int, small: int, large: int) -> None:
    ratio = inputs.hf_bytes(inputs.bench_arch(large, hidden)) / inputs.hf_bytes(inputs.bench_arch(small, hidden))
    assert 3.9 <= ratio <= 4.1


def test_bench_arch_keeps_super_pattern_and_rejects_odd_widths() -> None:
    from nemotron3_super.architecture import super_120b_a12b

    arch = inputs.bench_arch(8, 512)
    assert arch.hybrid_override_pattern == super_120b_a12b().hybrid_override_pattern
    assert (arch.hidden_size, arch.moe_latent_size, arch.num_experts_per_tok) == (512, 256, 8)
    assert inputs.bench_arch(2, 256).num_experts_per_tok == 2  # top-k never above the expert count
    with pytest.raises(ValueError, match="--hidden 500"):
        inputs.bench_arch(8, 500)


def test_real_slice_has_super_real_shapes_and_its_mtp_block() -> None:
    from nemotron3_super.architecture import super_120b_a12b

    real, arch = super_120b_a12b(), inputs.real_slice_arch(3)
    assert arch.hybrid_override_pattern == real.hybrid_override_pattern[:3]
    assert arch.mtp_hybrid_override_pattern == real.mtp_hybrid_override_pattern
    assert (arch.hidden_size, arch.n_routed_experts, arch.moe_latent_size) == (4096, 512, 1024)
    assert 13e9 < inputs.hf_bytes(arch) < 15e9
    with pytest.raises(ValueError, match="--layers 0"):
        inputs.real_slice_arch(0)


def test_disk_bandwidth_measures_both_ways_and_leaves_nothing(tmp_path: Path) -> None:
    write, read = inputs.disk_bandwidth(tmp_path, 64 * 2**20)
    assert write > 0 and read > 0
    assert list(tmp_path.iterdir()) == []
    assert inputs.copy_rate(1.0, 1.0) == pytest.approx(0.5)  # each byte read once and written once


def test_top_shares_reports_self_and_our_cumulative_time() -> None:
    from nemotron3_super.hf_layout import hf_tensors

    prof = cProfile.Profile()
    prof.enable()
    list(hf_tensors(inputs.bench_arch(8)))
    prof.disable()
    shares = convert.top_shares(prof, seconds=1.0, top=5)
    assert len(shares["self"]) == 5
    assert any("hf_tensors" in label for *_, label in shares["ours_cumulative"])
    assert all(seconds >= 0 and calls >= 1 for seconds, _, calls, _ in shares["self"])


def test_unknown_step_is_refused_with_the_known_ones(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["convert.py", "--steps", "ours-import,ours-imprt"])
    with pytest.raises(SystemExit):
        convert.parse_args()
    assert "'ours-imprt'" in capsys.readouterr().err


def test_cleanup_removes_outputs_keeps_inputs_on_request_and_refuses_other_folders(tmp_path: Path) -> None:
    work = tmp_path / "experts8-hidden512"
    for name in ("hf", "hf-nvfp4", "megatron", "exported", "megatron-nvfp4"):
        (work / name).mkdir(parents=True)
    convert.cleanup(work, keep=True)
    assert sorted(p.name for p in work.iterdir()) == ["hf", "hf-nvfp4"]
    convert.cleanup(work, keep=False)
    assert not work.exists()  # emptied, then removed
    (tmp_path / "mine" / "hf").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a folder of this benchmark"):
        convert.cleanup(tmp_path / "mine", keep=False)
    assert (tmp_path / "mine" / "hf").is_dir()
