"""Start-up time of the command line against a bare Python start, measured in the same run.

Usage: python analyses/bench_cli.py [--repeats 5]

Times ``python -c pass``, ``dualform --help``, ``dualform info --refresh`` (the embedded model
loaded and its card computed: the uncached baseline, weights already cached) and ``dualform
info`` (the kept card read back) as subprocesses, alternating their order in each round so that
load from other processes hits all of them; prints the median wall time of each, its ratio to
``python -c pass``, and the ratio of cached to uncached ``dualform info``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "dualform --help": [sys.executable, "-m", "dualform.cli", "--help"],
    "dualform info --refresh": [sys.executable, "-m", "dualform.cli", "info", "--refresh"],
    "dualform info": [sys.executable, "-m", "dualform.cli", "info"],
}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    wall(COMMANDS["dualform info --refresh"])  # warm the model cache, the card, the file system
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(wall(COMMANDS[name]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["python -c pass"]
    for name, median in medians.items():
        print(f"{name:24s} {median:6.2f} s   {median / base:6.1f}x python -c pass")
    cached, uncached = medians["dualform info"], medians["dualform info --refresh"]
    print(f"{'dualform info':24s} cached / uncached: {cached / uncached:.3f} "
          f"({uncached / cached:.0f}x faster)")


if __name__ == "__main__":
    main()
