"""Build causal-conv1d's CUDA extension for one GPU architecture, offline, and check it against torch.

Why: megatron-core's memory-efficient Mamba path (``use_mamba_mem_eff_path=True``) needs causal-conv1d's
CUDA kernels, and there is no wheel for every torch/CUDA pair. The sdist's ``setup.py`` compiles for every
architecture its nvcc knows (nine with CUDA 13), which takes far longer than one. This script builds the
given sdist for the visible GPU's architecture only (``TORCH_CUDA_ARCH_LIST``), into a folder you put on
``PYTHONPATH``, then runs the forward and backward kernels against ``torch.nn.functional.conv1d``.

    python benchmarks/build_causal_conv1d.py causal_conv1d-1.7.0.tar.gz --target /tmp/ccsite
    PYTHONPATH=/tmp/ccsite:$PYTHONPATH python benchmarks/train_step.py --mamba-path all

The target is written to a temporary folder beside it and renamed at the end, so a failed build leaves
nothing behind. Exit status: 0 built and checked, 1 build or check failed, 2 bad arguments / no GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

# setup.py lists its targets as cc_flag.append("-gencode") / cc_flag.append("arch=compute_XX,code=sm_XX") pairs
GENCODE_LINE = re.compile(r'^([ \t]*)cc_flag\.append\("(-gencode|arch=compute_\w+,code=sm_\w+)"\)[ \t]*$', re.MULTILINE)

CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from causal_conv1d import causal_conv1d_fn
    torch.manual_seed(0)
    worst = 0.0
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        x = torch.randn(2, 384, 1024, device="cuda", dtype=dtype, requires_grad=True)   # (batch, channels, seq)
        w = torch.randn(384, 4, device="cuda", dtype=dtype, requires_grad=True)        # 4 taps, as Mamba-2
        b = torch.randn(384, device="cuda", dtype=dtype, requires_grad=True)
        out = causal_conv1d_fn(x, w, b, activation="silu")
        g = torch.randn_like(out)
        out.backward(g)
        got = [t.float() for t in (out, x.grad, w.grad, b.grad)]
        x2, w2, b2 = (t.detach().float().requires_grad_() for t in (x, w, b))
        ref = F.silu(F.conv1d(x2, w2.unsqueeze(1), b2, padding=3, groups=384)[..., :1024])
        ref.backward(g.float())
        for name, a, r in zip(("out", "dx", "dw", "db"), got, (ref, x2.grad, w2.grad, b2.grad)):
            err = ((a - r).norm() / r.norm()).item()
            worst = max(worst, err)
            print(f"  {str(dtype):15s} {name}: relative L2 error {err:.2e} (limit {tol:.0e})")
            assert err < tol, f"causal_conv1d {name} in {dtype} is off by {err:.2e} relative L2 (limit {tol:.0e})"
    print(f"kernel check passed (worst relative L2 {worst:.2e})")
""")


def restrict_setup(setup: Path) -> int:
    """Drop setup.py's own -gencode list so torch's TORCH_CUDA_ARCH_LIST decides; returns lines removed."""
    text = setup.read_text()
    found = GENCODE_LINE.findall(text)
    if not any(flag.startswith("arch=") for _, flag in found):
        raise SystemExit(f"{setup}: found no 'cc_flag.append(\"arch=compute_..\")' lines; this sdist's setup.py "
                         "is not laid out as causal-conv1d 1.x's, so the build cannot be restricted to one arch")
    setup.write_text(GENCODE_LINE.sub(r"\1pass", text))  # `pass` keeps the `if nvcc >= X:` blocks valid
    return len(found)


def gpu_arch() -> str | None:
    """The visible GPU's compute capability, e.g. "9.0" on H100/H200; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sdist", type=Path, help="causal_conv1d-X.Y.Z.tar.gz (pip download --no-binary :all:)")
    p.add_argument("--target", type=Path, required=True, help="folder to put on PYTHONPATH (must not exist)")
    p.add_argument("--arch", default=None, help="compute capability, e.g. 9.0 (default: the visible GPU's)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs (MAX_JOBS)")
    p.add_argument("--no-check", action="store_true", help="skip the kernel check (needs a GPU)")
    args = p.parse_args(argv)
    if not args.sdist.is_file():
        p.error(f"sdist {args.sdist} does not exist")
    if args.target.exists():
        p.error(f"--target {args.target} already exists; remove it or pick another folder")
    if not re.fullmatch(r"\d+\.\d+a?", args.arch or "0.0"):
        p.error(f"--arch {args.arch!r}: expected a compute capability such as 9.0")
    visible = gpu_arch()
    arch = args.arch or visible
    if arch is None:
        p.error("no CUDA device visible to torch: pass --arch (e.g. 9.0), and --no-check to build without one")
    if not args.no_check and visible is None:
        p.error("the kernel check needs a GPU: run on one, or pass --no-check")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ccbuild-") as tmp:
        with tarfile.open(args.sdist) as tar:
            tar.extractall(tmp, filter="data")
        setups = list(Path(tmp).glob("*/setup.py"))
        if len(setups) != 1:
            raise SystemExit(f"{args.sdist}: expected one top-level folder with setup.py, found {len(setups)}")
        removed = restrict_setup(setups[0])
        print(f"building {args.sdist.name} for sm_{arch.replace('.', '')} only "
              f"(dropped {removed} setup.py -gencode lines), {args.jobs} jobs", flush=True)
        staging = args.target.with_name(args.target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        env = dict(os.environ, CAUSAL_CONV1D_FORCE_BUILD="TRUE", TORCH_CUDA_ARCH_LIST=arch,
                   MAX_JOBS=str(args.jobs))
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
               "--target", str(staging), str(setups[0].parent)]
        if subprocess.run(cmd, check=False, env=env).returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            print(f"build failed: {' '.join(cmd)}", file=sys.stderr)
            return 1
    built = time.perf_counter() - t0
    sos = sorted(staging.glob("causal_conv1d_cuda*.so"))
    if not sos:  # e.g. CAUSAL_CONV1D_SKIP_CUDA_BUILD in the environment: a pure-Python install is no use here
        shutil.rmtree(staging, ignore_errors=True)
        print(f"build produced no causal_conv1d_cuda extension in {staging}: nothing installed", file=sys.stderr)
        return 1
    size = sum(s.stat().st_size for s in sos) / 2**20
    print(f"built in {built:.0f} s: {', '.join(s.name for s in sos)} ({size:.1f} MiB)", flush=True)

    if not args.no_check:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(staging), os.environ.get("PYTHONPATH")])))
        if subprocess.run([sys.executable, "-c", CHECK], check=False, env=env).returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            print("kernel check failed: nothing installed", file=sys.stderr)
            return 1
    staging.rename(args.target)
    print(f"installed to {args.target}; use PYTHONPATH={args.target}:$PYTHONPATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
