"""Parse-time cost of the operators: importing ``limio_provider.operators`` right after ``airflow.sdk``.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_import.py [--processes 9]``.

Each sample is a fresh interpreter that imports ``airflow.sdk`` (which every DAG file pays anyway), then times
the import of the module under test in-process. Prints the median over the processes for the operators, for
``requests`` alone (a reference: the hook's dependency, which the operators module must not import) and for the
HTTP provider's operator module when it is installed. Goal: operators at most +20 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys

PROBE = (
    "import time, airflow.sdk, importlib; t = time.perf_counter(); importlib.import_module({module!r}); "
    "print(time.perf_counter() - t); import sys; print('requests' in sys.modules)"
)


def sample(module: str) -> tuple[float, bool]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[-2]), out[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=9)
    args = parser.parse_args()
    modules = ["limio_provider.operators", "requests"]
    if importlib.util.find_spec("airflow.providers.http"):
        modules.append("airflow.providers.http.operators.http")
    for module in modules:
        runs = [sample(module) for _ in range(args.processes)]
        median_ms = statistics.median(t for t, _ in runs) * 1000
        pulled = "yes" if any(r for _, r in runs) else "no"
        print(
            f"{module:42s} +{median_ms:6.1f} ms after airflow.sdk (median of {args.processes}); "
            f"imports requests: {pulled}"
        )


if __name__ == "__main__":
    main()
