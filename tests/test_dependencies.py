"""Every third-party package brainkernels imports is declared in pyproject.toml: at the top of a
module in [project] dependencies (an import that fails there breaks the module), inside a
function there or in an extra. A package that arrives only through another one's requirements
(scikit-learn through nilearn) can disappear with that package's next release."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import brainkernels

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PACKAGE = Path(brainkernels.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
# Subpackages imported only when their extra is installed (the backends load them on first use).
OPTIONAL_SUBPACKAGES = ("triton",)


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_names(requirements: list[str]) -> set[str]:
    return {_normalised(re.match(r"[A-Za-z0-9_.-]+", requirement).group()) for requirement in requirements}


def _third_party_imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Top-level names imported by statements in the module's body, and those imported elsewhere."""
    at_top = {id(node) for node in tree.body}
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            root = name.split(".")[0]
            if root != "brainkernels" and root not in sys.stdlib_module_names:
                (top if id(node) in at_top else nested).add(root)
    return top, nested


@pytest.mark.skipif(not PYPROJECT.exists(), reason="brainkernels is not imported from its source tree")
def test_every_imported_package_is_declared():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    required = _declared_names(project["dependencies"])
    optional = set().union(*(_declared_names(extra) for extra in project["optional-dependencies"].values()))
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top, nested = _third_party_imports(ast.parse(path.read_text()))
        if path.relative_to(PACKAGE).parts[0] in OPTIONAL_SUBPACKAGES:
            top, nested = set(), top | nested
        for root, allowed in [(root, required) for root in top] + [(root, required | optional) for root in nested]:
            names = {_normalised(name) for name in distributions.get(root, [root])}
            if not names & allowed:
                undeclared.append(f"{path.relative_to(PACKAGE)} imports {root} ({', '.join(sorted(names))})")
    assert undeclared == []
