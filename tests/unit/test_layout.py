"""The package arrows (../STYLE: shared/ is the protocol package): shared/ imports none of the
others and no aiohttp or torch; gateway/ and workers/ never import each other or the composition
root (inferq/); inferq/ may import everything. Read from the source with ``ast``, so a lazy import
inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "shared": {"gateway", "workers", "inferq", "aiohttp", "torch", "transformers"},
    "gateway": {"workers", "inferq", "torch", "transformers"},
    "workers": {"gateway", "inferq", "aiohttp"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gateway.app import run\n    import torch.nn\n")
    assert imported_packages(module) == {"gateway", "torch"}
