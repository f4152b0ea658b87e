"""The package's layers, read from its imports: ``run/`` never imports data/, systems/, nets/,
bench/, ops/ or a command; ``nets/``, ``color`` and ``metrics`` never import ``run/``; nothing
in the package imports ``ops/``. An arrow against these rules fails here, naming the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import joint_colsr

PACKAGE = Path(joint_colsr.__file__).resolve().parent
COMMANDS = ("train", "eval", "predict", "compare", "compare_run", "two_stage", "preprocess", "report", "model_table", "assembly")

#: (modules the rule applies to, module prefixes they must not import)
RULES = [
    ("joint_colsr.run", ["joint_colsr.data", "joint_colsr.systems", "joint_colsr.nets", "joint_colsr.bench",
                         "joint_colsr.ops", *(f"joint_colsr.{c}" for c in COMMANDS)]),
    ("joint_colsr.nets", ["joint_colsr.run"]),
    ("joint_colsr.color", ["joint_colsr.run"]),
    ("joint_colsr.metrics", ["joint_colsr.run"]),
    ("joint_colsr", ["joint_colsr.ops"]),  # operator tools: nothing in the package leans on them
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``joint_colsr`` module a file imports (at the top or inside a function), with its line."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from joint_colsr import outputs` imports a module, `from joint_colsr.x import f` a name
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            found.append((node.lineno, base))
    return [(line, mod) for line, mod in found if mod == "joint_colsr" or mod.startswith("joint_colsr.")]


def violations(files: list[Path], rules=RULES) -> list[str]:
    out = []
    for path in files:
        name = module_name(path)
        for scope, forbidden in rules:
            if not (name == scope or name.startswith(scope + ".")):
                continue
            if scope == "joint_colsr" and name.startswith("joint_colsr.ops"):
                continue  # the ops modules themselves
            for line, mod in imported_modules(path):
                for bad in forbidden:
                    if (mod == bad or mod.startswith(bad + ".")) and not (name == bad or name.startswith(bad + ".")):
                        out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod} ({scope} must not import {bad})")
    return out


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts)


def test_the_package_keeps_its_layers():
    files = package_files()
    assert any(module_name(p).startswith("joint_colsr.run.") for p in files), "run/ not found"
    assert violations(files) == []


def test_an_upward_import_is_caught():
    """Control: the reader sees plain, from-, relative and function-local imports."""
    fake = PACKAGE / "run" / "_layer_probe_does_not_exist.py"
    source = ("import joint_colsr.data.sources\n"
              "from joint_colsr import train\n"
              "from ..systems import colsr\n"
              "def f():\n    from joint_colsr.nets.blocks import ConvBlock\n")
    tree_calls = []
    real_read = Path.read_text

    def fake_read(self, *args, **kwargs):
        if self == fake:
            tree_calls.append(self)
            return source
        return real_read(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_text", fake_read)
        found = violations([fake])
    assert tree_calls
    assert len([v for v in found if "joint_colsr.data" in v]) == 1
    assert any("joint_colsr.train" in v for v in found)
    assert any("joint_colsr.systems" in v for v in found)
    assert any(":5 imports joint_colsr.nets.blocks" in v for v in found)
    # and a core module importing run/ is caught too
    color = PACKAGE / "color.py"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_text", lambda self, *a, **k: "from joint_colsr.run.outputs import atomic_write\n"
                   if self == color else real_read(self, *a, **k))
        found = violations([color])
    assert found and all("joint_colsr.color must not import joint_colsr.run" in v for v in found)
