"""Every benchmark figure in one command (``make bench``).

Runs, in order: the twin's thrashing curve, the policy sweeps (virtual time), then the live
ones on loopback ports: the harness-agreement check (about one minute), environment
preparation hidden behind reasoning and disk in use with and without lifecycle collection
(local provider, a few minutes each). The load, soak, latency and tick scripts measure the
machine they run on and are run one at a time on a quiet machine (benchmarks/README.md);
real vLLM against the twin is ``make vllm-check``. Results land in ``benchmarks/results/``.

    .venv/bin/python -m benchmarks.run_all [--skip-live]
"""

from __future__ import annotations

import argparse
import time

from benchmarks import disk_gc, env_prep, harness_agreement, sweeps, twin_thrashing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-live", action="store_true", help="no live-server benchmark")
    args = parser.parse_args(argv)
    started = time.monotonic()
    twin_thrashing.main([])
    sweeps.main([])
    if not args.skip_live:
        harness_agreement.main([])
        env_prep.main([])
        disk_gc.main([])
    print(f"all benchmarks done in {time.monotonic() - started:.0f} s (wall)")


if __name__ == "__main__":
    main()
