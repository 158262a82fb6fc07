"""Every third-party import of framework/, launch/ and kernels/ (lazy ones included) is a declared dependency.

Declared = listed in pyproject.toml ``[project] dependencies`` with a range that its pin in
launch/requirements-cpu.txt (what launch/setup.sh installs) satisfies. Imports are read with ``ast`` and mapped
to distributions with ``importlib.metadata.packages_distributions()``, so an imported module must be installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("framework", "launch", "kernels")
FIRST_PARTY = {"framework", "launch", "scalefirst_kernels"}

NOT_DECLARED = {"torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu"}
"""Installed explicitly by launch/setup.sh (CPU) or the README's GPU install: see the comment in pyproject.toml."""
PENDING: set[str] = set()
"""Distributions tolerated while a branch that declares them is in flight; empty on main."""


def third_party_imports() -> dict[str, set[str]]:
    """top-level module → files importing it."""
    found: dict[str, set[str]] = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    root = name.split(".")[0]
                    if root not in FIRST_PARTY and root not in sys.stdlib_module_names and root != "__future__":
                        found.setdefault(root, set()).add(path.relative_to(REPO).as_posix())
    return found


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(spec) for spec in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "launch" / "requirements-cpu.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_every_third_party_import_is_declared() -> None:
    modules = third_party_imports()
    assert {"deepspeed", "webdataset", "sklearn", "matplotlib", "yaml", "numpy"} <= modules.keys()  # scan works
    dists = importlib.metadata.packages_distributions()
    deps = declared()
    problems = []
    for module, files in sorted(modules.items()):
        if module not in dists:
            problems.append(f"{module} (imported by {sorted(files)}) is not installed")
            continue
        names = {canonicalize_name(d) for d in dists[module]}
        if names & (NOT_DECLARED | PENDING | deps.keys()):
            continue
        problems.append(f"{module} (distribution {sorted(names)}, imported by {sorted(files)[:3]}) is undeclared")
    assert not problems, "add to pyproject.toml dependencies and launch/requirements-cpu.txt:\n" + "\n".join(problems)


def test_declared_ranges_admit_the_pinned_versions() -> None:
    pins = pinned()
    problems = []
    for name, req in declared().items():
        if name not in pins:
            problems.append(f"{name}: declared in pyproject.toml but not pinned in launch/requirements-cpu.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}: pin {pins[name]} is outside the declared range {req.specifier}")
    assert not problems, "\n".join(problems)


def test_every_framework_package_is_listed() -> None:
    """A non-editable install ships only the packages pyproject.toml names: a new sub-package must be listed."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("framework", "launch")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
