"""The CPU-checkable parts of the GPU benchmarks: paired-ratio statistics, Mamba path selection and the
causal-conv1d single-architecture build's rewrite of setup.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from bench_scripts import load

cc = load("build_causal_conv1d")
report = load("train_step_report")
rows_mod = load("train_step_rows")
timing = load("step_timing")
ts = load("train_step")


# ------------------------------------------------------------------ paired (interleaved) ratio
def test_paired_summary_is_the_median_of_per_round_ratios() -> None:
    # a drift that slows both models alike in rounds 3-4 leaves the per-round ratio at 1.25
    host = [100.0, 100.0, 200.0, 200.0, 100.0]
    ours = [80.0, 80.0, 160.0, 160.0, 80.0]
    out = timing.paired_summary(host, ours)
    assert out["ratio_median"] == pytest.approx(1.25)
    assert out["ratio_q1"] == pytest.approx(1.25) and out["ratio_q3"] == pytest.approx(1.25)
    assert out["rounds"] == 5 and out["rounds_ours_faster"] == 5
    assert out["host_ms_median"] == 100.0 and out["ours_ms_median"] == 80.0


def test_paired_summary_counts_rounds_where_ours_is_slower() -> None:
    out = timing.paired_summary([100.0, 100.0, 100.0], [90.0, 110.0, 125.0])
    assert out["rounds_ours_faster"] == 1
    assert out["ratio_median"] == pytest.approx(100 / 110)


@pytest.mark.parametrize(("host", "ours"), [([], []), ([1.0, 2.0], [1.0])])
def test_paired_summary_rejects_unmatched_rounds(host: list[float], ours: list[float]) -> None:
    with pytest.raises(ValueError, match="equally many host and ours steps"):
        timing.paired_summary(host, ours)


def test_paired_cell_formats_result_error_and_absence() -> None:
    assert report.paired_cell(None) == "—"
    assert report.paired_cell({"error": "CUDA out of memory"}) == "failed: CUDA out of memory"
    assert report.paired_cell({"ratio_median": 1.0123, "ratio_q1": 0.99, "ratio_q3": 1.03}) == "1.012 (0.990-1.030)"


# ------------------------------------------------------------------ Mamba paths
def test_mamba_path_kernels_fallback_hides_causal_conv1d_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.core.ssm import mamba_mixer

    from nemotron3_super.mamba_path import mamba_kernels

    sentinel = object()
    monkeypatch.setattr(mamba_mixer, "causal_conv1d_fn", sentinel)
    with rows_mod.mamba_path_kernels("fallback"):
        assert mamba_mixer.causal_conv1d_fn is None
        assert mamba_kernels(mem_eff=False).startswith("nn.Conv1d")
    assert mamba_mixer.causal_conv1d_fn is sentinel
    with rows_mod.mamba_path_kernels("split"):
        assert mamba_mixer.causal_conv1d_fn is sentinel
        assert mamba_kernels(mem_eff=False).startswith("causal_conv1d_fn")


def test_mamba_path_kernels_split_without_causal_conv1d_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.core.ssm import mamba_mixer

    monkeypatch.setattr(mamba_mixer, "causal_conv1d_fn", None)
    with pytest.raises(RuntimeError, match="split needs causal-conv1d"), rows_mod.mamba_path_kernels("split"):
        pass


def test_path_agreement_reports_each_model_seen_on_two_paths() -> None:
    rows = [
        {"impl": "ours", "shape": "full", "mamba_path": "fallback", "loss_first": 10.0},
        {"impl": "ours", "shape": "full", "mamba_path": "mem_eff", "loss_first": 10.001},
        {"impl": "host", "shape": "host-buildable", "mamba_path": "fallback", "loss_first": 9.0},
        {"impl": "host", "shape": "host-buildable", "mamba_path": "mem_eff", "error": "boom"},
    ]
    lines = report.path_agreement(rows)
    assert len(lines) == 1  # the host model has one successful path: nothing to compare
    assert "ours @ full: fallback 10.0000, mem_eff 10.0010" in lines[0] and "1.0e-04" in lines[0]


def test_cli_names_paths_and_sets() -> None:
    assert ts.parse_args(["--mamba-path", "all"]).mamba_path == "all"
    assert rows_mod.PATH_SETS["all"] == list(rows_mod.MAMBA_PATHS)
    assert ts.parse_args([]).paired is True and ts.parse_args(["--no-paired"]).paired is False


# ------------------------------------------------------------------ causal-conv1d build for one arch
SETUP = textwrap.dedent("""\
    cc_flag = []
    if True:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_80,code=sm_80")
        if bare_metal_version >= Version("11.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_90,code=sm_90")
    flags = ["-O3"] + cc_flag
""")


def test_restrict_setup_drops_every_gencode_and_keeps_python_valid(tmp_path: Path) -> None:
    setup = tmp_path / "setup.py"
    setup.write_text(SETUP)
    assert cc.restrict_setup(setup) == 4
    text = setup.read_text()
    assert "gencode" not in text and "arch=" not in text
    compile(text, str(setup), "exec")  # the emptied `if` block holds `pass`
    assert 'flags = ["-O3"] + cc_flag' in text


def test_restrict_setup_refuses_an_unknown_layout(tmp_path: Path) -> None:
    setup = tmp_path / "setup.py"
    setup.write_text("ext = CUDAExtension(extra_compile_args={'nvcc': ['-arch=sm_90']})\n")
    with pytest.raises(SystemExit, match="found no 'cc_flag.append"):
        cc.restrict_setup(setup)
    assert "sm_90" in setup.read_text()  # left untouched


@pytest.mark.parametrize(("argv", "message"), [
    (["missing.tar.gz", "--target", "{tmp}/site"], "does not exist"),
    (["{sdist}", "--target", "{tmp}"], "already exists"),
    (["{sdist}", "--target", "{tmp}/site", "--arch", "sm_90"], "expected a compute capability"),
])
def test_build_script_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                            message: str) -> None:
    sdist = tmp_path / "causal_conv1d-0.0.0.tar.gz"
    sdist.write_bytes(b"")
    argv = [a.format(tmp=tmp_path, sdist=sdist) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        cc.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "site").exists() and not (tmp_path / "site.partial").exists()


def test_markdown_table_shows_spread_sequential_and_paired_ratios() -> None:
    host = {"impl": "host", "shape": "host-buildable", "mamba_path": "fallback", "params": 1.6e9,
            "step_ms": [100.0, 110.0, 120.0, 130.0, 140.0], "step_ms_median": 120.0, "tokens_per_s": 1000.0,
            "tflops": 10.0, "peak_gib": 20.0, "shape_config": {"a": 1}}
    ours = {**host, "impl": "ours", "tokens_per_s": 1100.0,
            "paired": {"ratio_median": 1.001, "ratio_q1": 0.95, "ratio_q3": 1.05}}
    rows = [host, ours]
    report.add_ratios(rows)
    table = report.markdown_table(rows, ["no final norm"])
    assert "| 120.0 (105-135) |" in table  # median (IQR)
    assert "| 1.100 | 1.001 (0.950-1.050) |" in table
    assert table.splitlines()[1].count("---") == len(table.splitlines()[0].split("|")) - 2


def test_build_without_a_cuda_extension_installs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real offline pip build of a stand-in sdist laid out as causal-conv1d's (its setup.py lists -gencode
    pairs) that makes no extension: the staging folder is removed and --target never appears."""
    import tarfile

    src = tmp_path / "causal_conv1d-0.0.1"
    (src / "causal_conv1d").mkdir(parents=True)
    (src / "causal_conv1d" / "__init__.py").write_text("")
    (src / "setup.py").write_text("from setuptools import setup\n" + SETUP.replace("bare_metal_version >= Version(\"11.8\")", "True")
                                  + "setup(name='causal_conv1d', version='0.0.1', packages=['causal_conv1d'])\n")
    sdist = tmp_path / "causal_conv1d-0.0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    target = tmp_path / "site"
    assert cc.main([str(sdist), "--target", str(target), "--arch", "9.0", "--no-check", "--jobs", "1"]) == 1
    err = capsys.readouterr()
    assert "dropped 4 setup.py -gencode lines" in err.out
    assert "produced no causal_conv1d_cuda extension" in err.err
    assert not target.exists() and not (tmp_path / "site.partial").exists()
