"""The docs site's API reference (docs/reference/, built by `make docs`) shows every public class.

Read from the sources with ``ast``: nothing is imported and mkdocs does not run here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

#: The public modules the reference covers.
MODULES = [
    "limio_provider.hooks.limio",
    "limio_provider.operators.orders",
    "limio_provider.operators.batch",
    "limio_provider.sensors.limio",
    "limio_provider.triggers.limio",
    "limio_provider.links.limio",
    "limio_provider.models.orders",
    "limio_provider.models.results",
    "limio_provider.exceptions",
    "limio_provider.exactly_once.identity",
    "limio_provider.exactly_once.ledger",
    "limio_provider.exactly_once.decisions",
    "limio_provider.exactly_once.matching",
    "limio_provider.exactly_once.submitter",
    "limio_provider.decide",
    "limio_provider.testing",
    "limio_provider.testing.emulator",
    "limio_provider.testing.faults",
    "limio_provider.testing.pytest_plugin",
]
#: The packages whose ``__all__`` is their public API.
PACKAGES = ["limio_provider.operators", "limio_provider.models", "limio_provider.testing"]
#: Public by name but not for users, with the reason.
NOT_IN_REFERENCE = {
    "limio_provider.testing.emulator.HttpError": "an error answer raised inside the emulator's route handlers",
}


def source(module: str) -> ast.Module:
    path = ROOT / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(path.read_text())


def directives() -> set[str]:
    """The identifiers of every ``::: identifier`` in the reference pages."""
    pages = sorted((ROOT / "docs/reference").glob("*.md"))
    assert pages, "no reference pages"
    return {name for page in pages for name in re.findall(r"^::: (\S+)", page.read_text(), flags=re.M)}


def documented(module: str, name: str, shown: set[str]) -> bool:
    """``module.name`` has a directive of its own, or its whole module is rendered."""
    return f"{module}.{name}" in shown or module in shown


def public_classes(module: str) -> list[str]:
    return [
        node.name for node in source(module).body if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
    ]


def defining_module(package: str, name: str) -> str:
    """Where ``package`` gets ``name`` from: an ``from x import name`` in its ``__init__`` (under
    ``TYPE_CHECKING`` too), else the package itself."""
    for node in ast.walk(source(package)):
        if isinstance(node, ast.ImportFrom) and node.module and any(alias.name == name for alias in node.names):
            return node.module
    return package


def exported(package: str) -> list[str]:
    for node in source(package).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{package} has no __all__")


@pytest.mark.parametrize("module", MODULES)
def test_every_public_class_is_in_the_reference(module: str) -> None:
    shown = directives()
    missing = [
        f"{module}.{name}"
        for name in public_classes(module)
        if not documented(module, name, shown) and f"{module}.{name}" not in NOT_IN_REFERENCE
    ]
    assert missing == [], f"add a '::: name' directive to a page in docs/reference/ for each of {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_in_the_reference(package: str) -> None:
    shown = directives()
    missing = [
        f"{package}.{name}" for name in exported(package) if not documented(defining_module(package, name), name, shown)
    ]
    assert missing == [], f"add a '::: name' directive to a page in docs/reference/ for each of {missing}"
