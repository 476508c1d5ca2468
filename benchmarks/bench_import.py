"""Parse-time cost of the operators: importing ``limio_provider.operators`` right after ``airflow.sdk``.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_import.py [--processes 9]``.

Each sample is a fresh interpreter that imports ``airflow.sdk`` (which every DAG file pays anyway), then times
one import statement in-process. Prints the median over the processes for a DAG naming the single-order
operator, the batch operator, and both; for ``requests`` alone (a reference: the hook's dependency, which the
operators must not import) and for the HTTP provider's operator module when it is installed. Goal (issue 17):
at most +10 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = (
    "import time, airflow.sdk, importlib; t = time.perf_counter(); {statement}; "
    "print(time.perf_counter() - t); import sys; print('requests' in sys.modules)"
)


def sample(statement: str) -> tuple[float, bool]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[-2]), out[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=9)
    args = parser.parse_args()
    # As installed (pip and uv compile bytecode at install): without it, each sample compiles the edited
    # modules again (PYTHONDONTWRITEBYTECODE, as on CI), which costs several times the import itself.
    import compileall

    import limio_provider

    compileall.compile_dir(str(Path(limio_provider.__file__).parent), quiet=1)
    # What DAG files do: name the operators they use (the package loads each operator's module on first use).
    statements = [
        "from limio_provider.operators import LimioSubmitOrderOperator",
        "from limio_provider.operators import LimioSubmitOrdersOperator",
        "import limio_provider.operators as o; o.LimioSubmitOrderOperator; o.LimioSubmitOrdersOperator",
        "import requests",
    ]
    if importlib.util.find_spec("airflow.providers.http"):
        statements.append("import airflow.providers.http.operators.http")
    for statement in statements:
        runs = [sample(statement) for _ in range(args.processes)]
        median_ms = statistics.median(t for t, _ in runs) * 1000
        pulled = "yes" if any(r for _, r in runs) else "no"
        print(
            f"{statement}\n    +{median_ms:6.1f} ms after airflow.sdk (median of {args.processes}); "
            f"imports requests: {pulled}"
        )


if __name__ == "__main__":
    main()
