"""Training-step throughput on one GPU: this library's Super model vs the host's built-in Nemotron-H path.

    source .whl/prelude.sh; python3 benchmarks/train_step.py --json $OUT/train_step.json --profile
    PYTHONPATH=/tmp/ccsite:$PYTHONPATH python3 benchmarks/train_step.py --mamba-path all --profile
    /tmp/v312/bin/python benchmarks/train_step.py --build-only --hidden 256 --vocab 1024 --experts 8 --topk 2
    python benchmarks/train_step.py --cpu-smoke          # no GPU: the whole script on tiny shapes (SMOKE_SHAPE)

One process builds a scaled-down Super-shaped model (default: hidden 2048, pattern ``MEM*EMEME`` = Super's
``MEM*E``/``ME`` rhythm with all three kinds, 32 routed experts top-4, LatentMoE at hidden/4 as Super's
1024/4096, a shared expert, MTP ``*E`` run at 2 depths, vocab 131072, 4096 tokens) twice:

* ``ours``  ``SuperModelProvider`` with ``spec_impl="local"`` (the GPU machine has no Transformer Engine);
* ``host``  the provider the host's own ``NemotronHBridge.provider_bridge`` makes from the same HF config,
  with megatron-core's local-module hybrid spec. megatron-core 0.19.2 cannot build that model without TE
  (its TE-free spec uses a TE norm, ``HybridStack`` builds its final norm with ``TENorm`` and ``MoELayer``
  asserts TE for the latent projections; no spec hook for the last two). The script tries the host path
  from "as shipped" towards the closest model it does build, records every error, then benchmarks that
  model and ours at the same shape (the apples-to-apples ratio) plus ours at the full latent shape.

Mamba paths (``--mamba-path``, column "mamba path"): ``fallback`` = megatron-core's unfused mixer with
``nn.Conv1d``, ``split`` = the same with causal-conv1d's CUDA conv, ``mem_eff`` = the fused
``mamba_split_conv1d_scan_combined``. The last two need causal-conv1d's CUDA extension; build it for the
visible GPU with ``benchmarks/build_causal_conv1d.py`` and put its folder on PYTHONPATH. Rows are timed for
each path in turn; the host ratio compares rows on the same path. After each path's rows, the host model
and ours at the same shape are held together and timed in interleaved rounds (``--no-paired`` skips it):
the step is launch-bound, so its time follows the load on the machine's CPUs, and the median over rounds
of host ms / ours ms is the ratio to read; the ratio of two sequential medians drifts with that load.

Each row: median of ``--steps`` (20) timed steps after ``--warmup`` (3); a step is forward + backward +
``torch.optim.AdamW`` step on one fixed random batch, bf16 weights (``.cuda().bfloat16()``, as
tests/gpu/test_tiny_train.py), timed with CUDA events. Peak memory: ``torch.cuda.max_memory_allocated``
over the timed steps (weights, gradients, optimizer state, activations).

Model FLOPs per token: the formula is in ``nemotron3_super/flops.py`` (next to the parameter counts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host_probe import HostPlan, describe_host, print_host_plan, probe_host  # noqa: E402 - after sys.path
from step_timing import TOP_KERNELS  # noqa: E402
from train_step_models import Run, bench_arch, error_record, free_cuda, shape_summary  # noqa: E402
from train_step_report import (add_ratios, jsonable, markdown_table, path_agreement, print_flops,  # noqa: E402
                               row_label, versions)
from train_step_rows import (EXPERT_IMPLS, MAMBA_PATHS, PATH_SETS, RowPlan, build_row, run_paired,  # noqa: E402
                             run_row)

from nemotron3_super import flops  # noqa: E402
from nemotron3_super.architecture import SuperArchitecture  # noqa: E402
from nemotron3_super.flops import model_flops_per_token  # noqa: E402
from nemotron3_super.mamba_path import mem_eff_unavailable  # noqa: E402

EXIT_CANNOT_RUN = 2  # no CUDA device (or the asked-for Mamba path cannot run here)
EXIT_ALL_FAILED = 1  # every benchmarked row failed: the table has nothing to read
# --cpu-smoke's defaults: seconds on two CPU cores, no Mamba layer (its scan is Triton-only), every other kind
SMOKE_SHAPE = {"hidden": 256, "pattern": "*E-", "experts": 4, "topk": 2, "vocab": 256, "seq": 32, "steps": 3,
               "warmup": 1}
DEFAULT_PATTERN = "MEM*EMEME"  # 4 Mamba-2, 4 latent MoE, 1 attention; every M and * followed by E, as in Super


def build_only(rows_plan: list[RowPlan], run: Run, host: HostPlan | None, full: SuperArchitecture,
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build each row's model once (no timing) and print its parameter count."""
    results = []
    for row in rows_plan:
        depths = run.mtp_depths if row.arch.mtp_hybrid_override_pattern else 0
        entry = {"impl": row.impl, "experts": row.experts, "shape": row.shape,
                 "flops_per_token": model_flops_per_token(row.arch, args.seq, depths)}
        try:
            _, model = build_row(row, run, host, mem_eff=False, init=False)
            entry["params"] = sum(p.numel() for p in model.parameters())
            del model
        except Exception as exc:  # noqa: BLE001 - reported, the other rows still build
            entry.update(error_record(exc))
        free_cuda()
        results.append(entry)
        print(f"built {row_label(entry):17s} @ {row.shape:14s}: " +
              (f"{entry['params']:,} params, {entry['flops_per_token'] / 1e9:.3f} GFLOP/token (train)"
               if "params" in entry else f"FAILED {entry['error']}"))
    if host:
        diffs = host.differences(full) if host.variant else ["builds nothing without TE"]
        print("host builds the full model: " + ("yes" if not diffs else "no (" + "; ".join(diffs) + ")"))
    return results


def benchmark(rows_plan: list[RowPlan], paths: list[str], run: Run, host: HostPlan | None,
              full: SuperArchitecture, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every (row, Mamba path); print the table and, with --profile, the top kernels."""
    rows = []
    same_shape = [r for r in rows_plan if r.shape == "host-buildable"]  # host and ours (first expert module)
    pair = [r for r in same_shape if r.impl == "host"][:1] + [r for r in same_shape if r.impl == "ours"][:1]
    for path in paths:
        for row in rows_plan:
            label = row_label({"impl": row.impl, "experts": row.experts})
            print(f"\n[{label} @ {row.shape}, mamba {path}] building and timing ...", flush=True)
            result = run_row(row, path, run, host, args)
            rows.append(result)
            if "error" in result:
                print(f"  FAILED: {result['error']}")
            else:
                print(f"  {result['mamba_kernels']}; median {result['step_ms_median']:.1f} ms, loss "
                      f"{result['loss_first']:.3f} -> {result['loss_last']:.3f}")
        if args.paired and host and len(pair) == 2 and not any("error" in r for r in rows[-len(rows_plan):]):
            print(f"\n[host vs ours @ host-buildable, mamba {path}] interleaved rounds ...", flush=True)
            paired = run_paired(pair[0], pair[1], path, run, host, args)
            next(r for r in rows[-len(rows_plan):] if r["impl"] == "ours" and r["shape"] == "host-buildable"
                 and r["experts"] == pair[1].experts)["paired"] = paired
            print(f"  FAILED: {paired['error']}" if "error" in paired else
                  f"  per-round ratio host/ours median {paired['ratio_median']:.3f} "
                  f"(IQR {paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f}; ours faster in "
                  f"{paired['rounds_ours_faster']} of {paired['rounds']} rounds)")
    add_ratios(rows)
    print("\n" + markdown_table(rows, host.differences(full) if host else []))
    for line in path_agreement(rows):
        print(line)
    for r in rows:
        if "profile" not in r:
            continue
        prof = r["profile"]
        print(f"\nTop {TOP_KERNELS} CUDA kernels, {row_label(r)} @ full, mamba {r['mamba_path']} "
              f"(profiled step {prof['step_ms']:.1f} ms, kernels {prof['kernel_ms_total']:.1f} ms):")
        if not prof["top"]:
            print("(the profiler recorded no CUDA kernel events)")
            continue
        print("| kernel | calls | ms | % of step |\n|---|---|---|---|")
        for k in prof["top"]:
            print(f"| `{k['kernel']}` | {k['calls']} | {k['ms']:.2f} | {k['pct_of_step']:.1f} |")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("ours", "host", "both"), default="both")
    p.add_argument("--expert-impl", choices=tuple(EXPERT_IMPLS), default="grouped",
                   help="routed experts of our rows: grouped (GroupedMLP, two grouped GEMMs; the local spec's "
                        "default), sequential (megatron-core's SequentialMLP, a GEMM pair per expert), or both")
    p.add_argument("--mamba-path", choices=(*MAMBA_PATHS, *PATH_SETS), default=None,
                   help="; ".join(f"{k}: {v}" for k, v in MAMBA_PATHS.items())
                   + "; both: fallback + mem_eff; all: the three. Default: all when causal-conv1d imports, "
                     "else fallback (build it: benchmarks/build_causal_conv1d.py)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size; every width keeps Super's ratio")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, help="backbone layer pattern (M, E, *, -)")
    p.add_argument("--mtp-pattern", default="*E", help="MTP block pattern, as Super ('' = no MTP)")
    p.add_argument("--mtp-depths", type=int, default=2, help="MTP depths run per step (Super: 1 block at 2)")
    p.add_argument("--experts", type=int, default=32, help="routed experts per MoE layer")
    p.add_argument("--topk", type=int, default=4, help="experts per token")
    p.add_argument("--latent", type=int, default=None, help="moe_latent_size (default hidden/4 as Super; 0 = none)")
    p.add_argument("--vocab", type=int, default=131072, help="vocabulary (Super's: 131072)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--dispatcher", choices=("alltoall", "allgather"), default="alltoall",
                   help="moe_token_dispatcher_type for both models (build-only on CPU: allgather)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--profile", action="store_true", help="profile one step of our full-shape model")
    p.add_argument("--no-paired", dest="paired", action="store_false",
                   help="skip the interleaved host-vs-ours rounds (they hold both same-shape models at once)")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--build-only", action="store_true",
                   help="build the models (CPU allowed: gloo, CPU init), print params and what the host builds")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: run every step of the script on CPU with wall clocks (tiny shapes without "
                        "Mamba layers, whose scan is Triton-only); checks the script, measures nothing")
    if p.parse_known_args(argv)[0].cpu_smoke:  # tiny shapes unless given: explicit flags still win
        p.set_defaults(**SMOKE_SHAPE)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.latent is None:
        args.latent = args.hidden // 4  # Super: 1024 / 4096
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not (args.build_only or args.cpu_smoke):
        print("train_step.py: no CUDA device visible to torch; this benchmark needs one GPU. "
              "(--build-only builds the models on CPU; --cpu-smoke runs the whole script on CPU.)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if args.cpu_smoke and cuda:
        print("train_step.py: --cpu-smoke is for machines without a GPU; drop it to benchmark", file=sys.stderr)
        return EXIT_CANNOT_RUN
    notes = []
    dispatcher = args.dispatcher
    if not cuda and dispatcher == "alltoall":
        dispatcher = "allgather"
        notes.append("CPU build: dispatcher allgather (alltoall allocates a CUDA stream at build; same weights)")
    reason = mem_eff_unavailable()
    if args.mamba_path is None:
        args.mamba_path = "all" if reason is None else "fallback"
        if reason:
            print(f"mamba path: fallback only, because {reason}")
    elif args.mamba_path != "fallback" and reason and not args.build_only:
        print(f"--mamba-path {args.mamba_path} needs causal-conv1d's CUDA kernels, but {reason} (build them: "
              "benchmarks/build_causal_conv1d.py)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    paths = PATH_SETS.get(args.mamba_path, [args.mamba_path])
    if args.steps < 20 and not args.build_only:
        notes.append(f"only {args.steps} timed steps (the benchmark's standard is >= 20)")
    if args.cpu_smoke:
        notes.append("--cpu-smoke: CPU wall-clock times of a script check, not a measurement")

    full = bench_arch(args.hidden, args.pattern, args.mtp_pattern, args.experts, args.topk, args.latent,
                      args.vocab, args.seq)
    run = Run(mtp_depths=args.mtp_depths, dispatcher=dispatcher, cuda=cuda, seed=args.seed)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU (smoke run)' if args.cpu_smoke else 'CPU (build only)'}")
    print("shape: " + json.dumps(shape_summary(full, run.mtp_depths)))
    print(f"sequence {args.seq} x micro-batch {args.micro_batch}, bf16, {args.warmup} warm-up + {args.steps} timed "
          f"steps, torch.optim.AdamW, dispatcher {dispatcher}, mamba path(s) {', '.join(paths)}")
    for note in notes:
        print(f"note: {note}")

    # megatron-core warns "use_mem_eff_path==False ... not functionally tested" once per Mamba layer per build;
    # the rows say which path ran
    logging.getLogger("megatron.core.ssm.mamba_mixer").setLevel(logging.ERROR)
    import torch.distributed as dist

    from nemotron3_super.conversion.process_groups import parallel_group

    with parallel_group(device=run.device):  # one rank, TP = EP = PP = 1 (torn down on exit)
        if dist.get_world_size() != 1:
            raise SystemExit("train_step.py is a one-GPU benchmark: run it without torchrun")
        report = run_all(args, full, run, paths, notes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(report), indent=1))
        print(f"\nwrote {args.json}")
    return exit_status(report)


def exit_status(report: dict[str, Any]) -> int:
    """0, or EXIT_ALL_FAILED (with the first error on stderr) when every benchmarked row failed."""
    rows = report.get("rows")
    if rows and all("error" in row for row in rows):
        print(f"train_step.py: every row failed ({len(rows)}; first: {rows[0]['error']})", file=sys.stderr)
        return EXIT_ALL_FAILED
    return 0


def run_all(args: argparse.Namespace, full: SuperArchitecture, run: Run, paths: list[str],
            notes: list[str]) -> dict[str, Any]:
    """Probe the host, plan the rows, then build (--build-only) or benchmark them; returns the report."""
    import torch

    host = probe_host(full, run) if args.impl in ("host", "both") else None
    if host:
        print_host_plan(host, full)
    print("\nModel FLOPs (formula: module docstring; LM heads = main + one per MTP depth):")
    print_flops("full shape", full, args.seq, run.mtp_depths)
    if host and host.arch is not None and host.arch != full:
        print_flops("host-buildable shape", host.arch, args.seq, run.mtp_depths)
    rows_plan: list[RowPlan] = []
    if host and host.variant:
        exact = not host.differences(full)  # e.g. no final norm: same shape config, still not the full model
        rows_plan.append(RowPlan("host", "full" if exact else "host-buildable", host.arch))
        if args.impl == "both" and host.arch != full:
            rows_plan += [RowPlan("ours", "host-buildable", host.arch, e) for e in EXPERT_IMPLS[args.expert_impl]]
    if args.impl in ("ours", "both"):
        rows_plan += [RowPlan("ours", "full", full, e) for e in EXPERT_IMPLS[args.expert_impl]]

    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if run.cuda else None, "versions": versions(),
        "bench": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dispatcher": run.dispatcher, "notes": notes,
        "build": {"use_cpu_initialization": not run.cuda, "perform_initialization": not args.build_only,
                  "dtype": "bf16 (.cuda().bfloat16())" if run.cuda else "bf16 params on CPU"},
        "shape_full": shape_summary(full, run.mtp_depths),
        "hf_config_full": full.to_hf_config_dict(),
        "flop_formula": flops.__doc__[flops.__doc__.index("Model FLOPs"):],
    }
    if host:
        report.update(describe_host(host, full, run))
    if args.build_only:
        report["build_only"] = build_only(rows_plan, run, host, full, args)
    else:
        report["rows"] = benchmark(rows_plan, paths, run, host, full, args)
    return report


if __name__ == "__main__":
    sys.exit(main())
