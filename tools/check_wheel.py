"""``make package``: what a user installs is complete and nothing more.

Run with the Python of a fresh virtualenv into which only the built wheel (no extras) was installed, in
isolated mode (``python -I``, so this checkout is not importable): ``python -I tools/check_wheel.py WHEEL``.
Checks the wheel's file list (the package, its ``py.typed`` and licence; no tests, tools or benchmarks), its
long description (the package index page: how to install, no links into the repository),
imports every public module (not the pytest plugin, which pytest loads), and prints the file list.
"""

from __future__ import annotations

import importlib
import re
import sys
import zipfile

PUBLIC_MODULES = (
    "limio_provider",
    "limio_provider.assets.limio",
    "limio_provider.exceptions",
    "limio_provider.get_provider_info",
    "limio_provider.hooks.limio",
    "limio_provider.exactly_once",
    "limio_provider.exactly_once.decisions",
    "limio_provider.exactly_once.identity",
    "limio_provider.exactly_once.ledger",
    "limio_provider.exactly_once.matching",
    "limio_provider.exactly_once.submitter",
    "limio_provider.links.limio",
    "limio_provider.models",
    "limio_provider.operators",
    "limio_provider.operators.batch",
    "limio_provider.operators.export",
    "limio_provider.operators.reconcile",
    "limio_provider.operators.orders",
    "limio_provider.sensors.limio",
    "limio_provider.testing",
    "limio_provider.testing.emulator",
    "limio_provider.testing.faults",
    "limio_provider.triggers.limio",
)


def main(wheel: str) -> int:
    names = sorted(zipfile.ZipFile(wheel).namelist())
    problems = [name for name in names if not name.startswith(("limio_provider/", "airflow_provider_limio-"))]
    for required in ("limio_provider/py.typed", "limio_provider/get_provider_info.py"):
        if required not in names:
            problems.append(f"missing {required}")
    if not any(name.endswith("licenses/LICENSE") for name in names):
        problems.append("missing the licence")
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    description = metadata.partition("\n\n")[2]
    if "pip install airflow-provider-limio" not in description:
        problems.append("the long description (the package index page) does not say how to install")
    if re.search(r"\]\((?!https://)", description):
        problems.append("the long description links into the repository, which a package index page cannot")
    for module in PUBLIC_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    # Optional: OpenLineage is an extra, and its module says how to install it.
    try:
        importlib.import_module("limio_provider.lineage")
        problems.append("limio_provider.lineage imported without the openlineage extra: is it a dependency now?")
    except ImportError as exc:
        if "airflow-provider-limio[openlineage]" not in str(exc):
            problems.append(f"import limio_provider.lineage without the extra: {exc}")
    # (a bare "tools" or "tests" may be some dependency's namespace package: look for ours by name)
    for module in ("tests.helpers", "tools.demo", "benchmarks.campaign", "dags_examples"):
        try:
            importlib.import_module(module)
            problems.append(f"{module} is importable from the installed wheel")
        except ImportError:
            pass
    print(f"{wheel}: {len(names)} files")
    for name in names:
        print(f"  {name}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"imported {len(PUBLIC_MODULES)} public modules" if not problems else "FAIL")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
