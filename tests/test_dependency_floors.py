"""pyproject.toml's lower bounds are the versions the code needs: an API newer than a floor
would fail on an older install (a GPU node brings its own torch) at its first call."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import joint_colsr

from .conftest import REPO

#: (text the package's code contains, distribution, first release that has it).
VERSIONED_APIS = [
    ("torch.nn.utils.get_total_norm", "torch", "2.6"),
    ("FlopCounterMode", "torch", "2.1"),
    ("torch.compile(", "torch", "2.0"),
]


def floors() -> dict[str, Version]:
    """Each dependency's lower bound (``>=``) in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if lower:
            found[req.name] = max(lower)
    return found


def test_the_floors_cover_every_versioned_api_the_code_calls():
    code = "\n".join(p.read_text() for p in Path(joint_colsr.__file__).parent.rglob("*.py"))
    bounds = floors()
    for text, dist, version in VERSIONED_APIS:
        assert text in code, f"{text} is no longer called: drop it from VERSIONED_APIS"
        assert bounds[dist] >= Version(version), f"{text} needs {dist}>={version}; pyproject.toml allows {dist}>={bounds[dist]}"
