"""Every benchmark figure in one command (``make bench``).

Runs, in order: the twin's thrashing curve, the policy sweeps (virtual time), and the
harness-agreement check (live servers on loopback ports, about two minutes). Other
benchmark scripts in this folder (the twin's own cost, vLLM replay) are run by their owners'
make targets. Results land in ``benchmarks/results/``.

    .venv/bin/python -m benchmarks.run_all [--skip-live]
"""

from __future__ import annotations

import argparse
import time

from benchmarks import harness_agreement, sweeps, twin_thrashing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-live", action="store_true", help="no live-server benchmark")
    args = parser.parse_args(argv)
    started = time.monotonic()
    twin_thrashing.main([])
    sweeps.main([])
    if not args.skip_live:
        harness_agreement.main([])
    print(f"all benchmarks done in {time.monotonic() - started:.0f} s (wall)")


if __name__ == "__main__":
    main()
