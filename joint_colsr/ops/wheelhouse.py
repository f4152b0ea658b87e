"""``make wheelhouse``: every wheel joint_colsr needs on another machine, for an offline install there.

``python -m joint_colsr.ops.wheelhouse [--python-version 3.12] [--provided FREEZE] [--out wheelhouse]``

Downloads (from the package index this machine reaches) the wheels of the package's
dependency closure for a target Python and platform (default: CPython 3.12, manylinux
x86-64), into one folder, plus the wheel of joint_colsr itself. Left out: torch and its own
CUDA stack (``triton``, ``nvidia-*``: GPU nodes bring their own build), and every package a
``pip freeze`` of the target (``--provided``) already lists, with what it needs. Versions are
the ones ``requirements/constraints.txt`` pins where it pins them (packages only the target
needs take the newest). A dependency published only as a source archive (such as
``antlr4-python3-runtime==4.9.3``, which hydra-core needs) is built into a wheel here, and
kept only when that wheel is pure Python (``py3-none-any``).

The closure is read from the downloaded wheels' own metadata, with the target's environment
markers, one pip call per level. Then, on the target (no network)::

    python3 -m pip install --no-index --find-links wheelhouse 'joint_colsr[launchers]'

(docs/offline-install.md has the whole procedure.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Iterable, Sequence

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
#: Never downloaded: the GPU node's own torch build and the CUDA libraries that come with it.
SKIPPED = ("torch", "triton")
SKIPPED_PREFIXES = ("nvidia-",)
#: manylinux x86-64 tags pip matches exactly (newest glibc first): what a current Linux node runs.
MANYLINUX_X86_64 = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64",
                                                                             "manylinux1_x86_64", "linux_x86_64"]


class WheelhouseError(RuntimeError):
    """A dependency that cannot be had as a wheel for the target; the message says which and why."""


def read_pins(path: Path | None) -> dict[str, str]:
    """``name==version`` lines (``pip freeze`` or a constraints file) -> {canonical name: version}.

    Local version labels (``+cpu``, ``+cu130``) are dropped; a bare name, and ``@`` (direct
    URL) lines, give the name with an empty version (known present, version unknown);
    comments and options (``-e ...``) are skipped.
    """
    pins: dict[str, str] = {}
    if path is None:
        return pins
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if " @ " in line:
            pins[canonicalize_name(line.split(" @ ", 1)[0])] = ""
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:===?\s*([^\s;]+))?\s*$", line)
        if match:
            pins[canonicalize_name(match.group(1))] = (match.group(2) or "").split("+", 1)[0]
    return pins


def is_skipped(name: str, provided: dict[str, str]) -> bool:
    """Left out of the wheelhouse: torch's family, or already on the target (``provided``)."""
    name = canonicalize_name(name)
    return name in SKIPPED or name.startswith(SKIPPED_PREFIXES) or name in provided


def target_environment(python_version: str) -> dict[str, str]:
    """Environment markers of a CPython ``python_version`` on x86-64 Linux."""
    env = dict(default_environment())
    major_minor = ".".join(python_version.split(".")[:2])
    env.update(python_version=major_minor, python_full_version=f"{major_minor}.0", implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", os_name="posix")
    return env


def requirements_of(requires: Iterable[str], env: dict[str, str], extras: Sequence[str] = ()) -> list[Requirement]:
    """The ``Requires-Dist`` entries that apply in ``env`` with ``extras`` requested."""
    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (*extras, "")):
            out.append(req)
    return out


def wheel_requires(wheel: Path) -> list[str]:
    """``Requires-Dist`` of a wheel file (its ``*.dist-info/METADATA``)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    return metadata.get_all("Requires-Dist") or []


@dataclass
class Plan:
    """What a wheelhouse holds: {name: wheel file} and what was left out, with why."""

    wheels: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def _download(specs: list[str], out: Path, python_version: str, platforms: Sequence[str]) -> list[str]:
    """``pip download --no-deps`` of ``specs`` for the target; returns the specs with no wheel."""
    missing: list[str] = []
    todo = list(specs)
    target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for platform in platforms:
        target += ["--platform", platform]
    while todo:
        proc = _pip(["download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d", str(out), *target, *todo])
        if proc.returncode == 0:
            break
        match = re.search(r"No matching distribution found for (\S+)", proc.stderr)
        if not match:
            raise WheelhouseError(f"pip download failed:\n{proc.stderr[-2000:]}")
        failed = canonicalize_name(Requirement(match.group(1)).name)
        gone = [s for s in todo if canonicalize_name(Requirement(s).name) == failed]
        if not gone:
            raise WheelhouseError(f"pip download failed on {match.group(1)}:\n{proc.stderr[-2000:]}")
        missing += gone
        todo = [s for s in todo if s not in gone]
    return missing


def _build_pure_wheel(spec: str, out: Path) -> Path:
    """Build ``spec`` from its source archive; keep it only if pure Python."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = _pip(["wheel", "--no-deps", "--quiet", "--disable-pip-version-check", "-w", tmp, spec])
        built = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not built:
            raise WheelhouseError(f"{spec}: no wheel for the target platform, and building one failed:\n{proc.stderr[-1500:]}")
        wheel = built[0]
        tags = parse_wheel_filename(wheel.name)[3]
        if not all(t.abi == "none" and t.platform == "any" for t in tags):
            raise WheelhouseError(f"{spec}: no wheel for the target platform on the index, and the one built here "
                                  f"({wheel.name}) is for this machine only; build it on the target")
        dest = out / wheel.name
        dest.write_bytes(wheel.read_bytes())
    return dest


def _wheels_in(folder: Path) -> dict[str, Path]:
    return {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in folder.glob("*.whl")}


def build_wheelhouse(out: Path, roots: Sequence[str], pins: dict[str, str], provided: dict[str, str],
                     python_version: str = "3.12", platforms: Sequence[str] = MANYLINUX_X86_64,
                     extras: Sequence[str] = ()) -> Plan:
    """Download the closure of ``roots`` (requirement strings) into ``out``; see the module docs."""
    out.mkdir(parents=True, exist_ok=True)
    env = target_environment(python_version)
    plan = Plan()
    seen: set[str] = set()
    level = requirements_of(roots, env, extras)
    while level:
        specs: list[str] = []
        for req in level:
            name = canonicalize_name(req.name)
            if name in seen:
                continue
            seen.add(name)
            if is_skipped(name, provided):
                plan.skipped[name] = "provided by the target" if name in provided else "torch and its CUDA stack: the node's own"
                continue
            pin = pins.get(name)
            specs.append(f"{req.name}=={pin}" if pin and req.specifier.contains(pin, prereleases=True)
                         else f"{req.name}{req.specifier}")
        for spec in _download(specs, out, python_version, platforms):
            _build_pure_wheel(spec, out)
            plan.built.append(spec)
        have = _wheels_in(out)
        nxt: list[Requirement] = []
        for spec in specs:
            name = canonicalize_name(Requirement(spec).name)
            wheel = have.get(name)
            if wheel is None:
                raise WheelhouseError(f"{spec}: downloaded, but no wheel of that name is in {out}")
            plan.wheels[name] = wheel
            extras_of = Requirement(spec).extras
            nxt += requirements_of(wheel_requires(wheel), env, tuple(extras_of))
        level = nxt
    return plan


def project_requirements(extras: Sequence[str]) -> list[str]:
    """joint_colsr's own ``Requires-Dist`` (installed metadata), extras' markers kept."""
    from importlib.metadata import requires

    return list(requires("joint_colsr") or [])


def build_project_wheel(out: Path) -> Path:
    proc = _pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "--disable-pip-version-check", "-w", str(out), str(REPO)])
    if proc.returncode != 0:
        raise WheelhouseError(f"building the joint_colsr wheel failed:\n{proc.stderr[-1500:]}")
    return next(out.glob("joint_colsr-*.whl"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m joint_colsr.ops.wheelhouse", description=__doc__.split("\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the target's Python (major.minor)")
    parser.add_argument("--provided", type=Path, default=None, help="a `pip freeze` of the target: what it already has")
    parser.add_argument("--out", type=Path, default=Path("wheelhouse"))
    parser.add_argument("--extras", default="launchers", help="extras of joint_colsr to include (comma-separated; '' for none)")
    parser.add_argument("--constraints", type=Path, default=REPO / "requirements" / "constraints.txt")
    parser.add_argument("--host", action="store_true", help="this machine's platform and Python instead (tests, a CPU node)")
    args = parser.parse_args(argv)
    extras = tuple(e for e in args.extras.split(",") if e)
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}" if args.host else args.python_version
    platforms = MANYLINUX_X86_64
    try:
        plan = build_wheelhouse(args.out, project_requirements(extras), read_pins(args.constraints), read_pins(args.provided),
                                python_version, platforms, extras)
        project = build_project_wheel(args.out)
    except WheelhouseError as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 1
    print(f"wheelhouse: {len(plan.wheels) + 1} wheels in {args.out} for CPython {python_version} manylinux x86-64 "
          f"({project.name} included; built from source: {', '.join(plan.built) or 'none'}); left out: "
          f"{', '.join(sorted(plan.skipped)) or 'nothing'}")
    print(f"install offline: python3 -m pip install --no-index --find-links {args.out} 'joint_colsr"
          f"{'[' + ','.join(extras) + ']' if extras else ''}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
