"""Layers point one way (DESIGN: dependency direction), checked over the source with ``ast``:
``proto`` imports only the standard library, ``directory`` never the queue, ``net`` never the
delivery agents, and only ``app.py`` names concrete stores."""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import taube

ROOT = Path(taube.__file__).parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())


def imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` for every import in ``path``, relative ones resolved."""
    package = ".".join(("taube", *path.relative_to(ROOT).parent.parts))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join([*base, *([node.module] if node.module else [])]), names
            else:
                yield node.module or "", names


def imported_by(layer: str) -> Iterator[tuple[str, str, list[str]]]:
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module, names in imports(path):
            yield path.relative_to(ROOT).as_posix(), module, names


def offenders(layer: str, forbidden: str) -> list[str]:
    return [f"{where}: {module}" for where, module, _ in imported_by(layer)
            if module == f"taube.{forbidden}" or module.startswith(f"taube.{forbidden}.")]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_imports(package: str) -> None:
    importlib.import_module(f"taube.{package}")


def test_relative_imports_are_resolved() -> None:
    found = dict((m, n) for m, n in imports(ROOT / "directory" / "resolve.py"))
    assert "taube.addressing" in found and "taube.directory.base" in found


def test_proto_imports_only_the_standard_library() -> None:
    outside = [f"{where}: {module}" for where, module, _ in imported_by("proto")
               if not module.startswith("taube.proto")
               and module.split(".")[0] not in sys.stdlib_module_names | {"__future__"}]
    assert outside == []


def test_directory_does_not_import_the_queue() -> None:
    assert offenders("directory", "queue") == []


def test_net_does_not_import_delivery() -> None:
    assert offenders("net", "delivery") == []


def test_only_app_names_concrete_stores() -> None:
    """Sessions get their stores through ``Services``; ``app.py`` builds them."""
    concrete = {"taube.store.maildir", "taube.directory.sqlite"}
    named = [f"{where}: {module} {names}" for where, module, names in imported_by("net")
             if module in concrete or {"MaildirMailbox", "SQLiteDirectory", "MaildirStore"} & set(names)]
    assert named == []
