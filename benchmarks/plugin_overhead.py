"""Plugin overhead: listing plugins (cold interpreter) and installing registrations into a loaded host.

    python benchmarks/plugin_overhead.py [--repeats 5]

Prints a table. Listing is timed as the wall time of a fresh ``nemotron3-super plugins --json``
process (what a user waits for) and of ``load_plugins(refresh=True)`` in-process; registration is
timed after the host is imported (host import excluded, reported separately). Targets: listing
under 1 s wall, registration under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def bench_listing(repeats: int) -> tuple[float, float]:
    from nemotron3_super.plugins.manager import load_plugins

    cold = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nemotron3_super", "plugins", "--json"], check=True,
                       capture_output=True, cwd=tempfile.gettempdir())
        cold.append(time.perf_counter() - t0)
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load_plugins(refresh=True)
        warm.append(time.perf_counter() - t0)
    return _median_ms(cold), _median_ms(warm)


def bench_registration() -> tuple[float, float]:
    from nemotron3_super.plugins.host import install_into_host
    from nemotron3_super.plugins.manager import load_plugins

    t0 = time.perf_counter()
    import megatron.bridge.models  # noqa: F401 - the host, as a trainer would already have it
    import megatron.bridge.recipes  # noqa: F401
    host_import = time.perf_counter() - t0

    plugin_set = load_plugins(refresh=True)
    t0 = time.perf_counter()
    install_into_host(plugin_set, bridge_policy="plugin")
    return host_import * 1e3, (time.perf_counter() - t0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cold_ms, warm_ms = bench_listing(args.repeats)
    host_ms, install_ms = bench_registration()
    rows = [
        ("plugin listing, fresh process (wall)", f"{cold_ms:,.0f} ms", "< 1000 ms"),
        ("load_plugins(refresh=True), in process", f"{warm_ms:,.1f} ms", ""),
        ("host import (excluded, for scale)", f"{host_ms:,.0f} ms", ""),
        ("install_into_host into imported host", f"{install_ms:,.1f} ms", "< 50 ms"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'median' if args.repeats > 1 else 'value':>10}  target")
    print(f"{'-' * width}  {'-' * 10}  ------")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:>10}  {target}")
    print(f"(python {sys.version.split()[0]}, {args.repeats} repeats for listing; registration measured once)")


if __name__ == "__main__":
    main()
