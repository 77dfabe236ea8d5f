"""pyproject.toml tells the truth: every library the package imports is declared, and the floors it declares
are the versions .ci/floors.txt pins for CI's floor job."""
import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the declared floor is 3.10
REPO = Path(__file__).resolve().parents[1]
OPTIONAL = {"sklearn"}  # the report falls back from fANOVA to PED-ANOVA without it


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def declared() -> dict[str, str]:
    return {_name(r): r for r in PROJECT["dependencies"]}


def test_every_library_the_package_imports_is_a_declared_dependency(declared):
    # an extra a feature asks for (`tracking:` needs mlflow or wandb) declares its import too; dev's do not count
    extras = {_name(r) for name, group in PROJECT["optional-dependencies"].items() if name != "dev" for r in group}
    modules = set()
    for path in [*REPO.glob("sweep/*.py"), *REPO.glob("aemodels/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"sweep", "aemodels"} - OPTIONAL
    distributions = importlib.metadata.packages_distributions()
    allowed = set(declared) | extras
    undeclared = sorted(m for m in third_party
                        if not {d.lower().replace("_", "-") for d in distributions.get(m, [m])} & allowed)
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_the_floor_job_pins_each_declared_floor(declared):
    pinned = dict(line.split("==") for line in (REPO / ".ci" / "floors.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert {"ray", "optuna", "torch", "pandas"} <= set(pinned)
    for name, version in pinned.items():
        floor = re.search(r">=([0-9.]+)", declared[name]).group(1)
        assert version.split(".")[:len(floor.split("."))] == floor.split("."), \
            f"{name}: floors.txt pins {version}, pyproject.toml says >={floor}"
