"""The install is reproducible: requirements/*.txt (written by ``make lock``) pin, with hashes,
every package pyproject.toml asks for; the demo's lock is the runtime and the simulator only, at
the dev lock's versions; the package metadata builds without setuptools' deprecation warnings.

A dependency added to pyproject.toml without ``make lock`` fails here, in the unit tier."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)( ;[^\\]*)?( \\)?$")


def entries(name):
    """[(package, version, marker, hashes)] of a lock file. A universal lock may pin a package
    twice, for different Pythons (``django==5.2.19 ; python_full_version < '3.12'``)."""
    found = []
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if match := PIN.match(line):
            marker = (match.group(3) or "").strip(" ;")
            found.append((canonicalize_name(match.group(1)), match.group(2), marker, []))
        elif line.strip().startswith("--hash=sha256:"):
            found[-1][3].append(line.strip())
    return found


def pins(name, python=None):
    """{package: (version, hashes)} of a lock file, as it installs on ``python`` ("3.12"; by
    default the one running)."""
    environment = {"python_version": python, "python_full_version": f"{python}.0"} if python else None
    return {package: (version, hashes) for package, version, marker, hashes in entries(name)
            if not marker or Marker(marker).evaluate(environment)}


def requirements(*extras):
    """The requirements of the project and of ``extras``, without its own ``imdsweb[...]``."""
    listed = PYPROJECT["project"]["dependencies"] + [
        r for extra in extras for r in PYPROJECT["project"]["optional-dependencies"][extra]
    ]
    return [r for r in map(Requirement, listed) if canonicalize_name(r.name) != "imdsweb"]


def assert_pinned(lock, wanted, name):
    for requirement in wanted:
        key = canonicalize_name(requirement.name)
        assert key in lock, f"{requirement} is not in requirements/{name}: run `make lock`"
        version = lock[key][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{name} pins {key}=={version}, outside {requirement}: run `make lock`"
        )


PYTHONS = ("3.11", "3.12", "3.13")  # requires-python >= 3.11: the locks are universal


def test_dev_lock_pins_everything_pyproject_asks_for_with_hashes():
    for python in PYTHONS:
        lock = pins("dev.txt", python)
        assert_pinned(lock, requirements("sim", "dev"), "dev.txt")
        assert "psycopg-binary" in lock and "flask" in lock  # the extras' own packages come along
    assert all(hashes for *_, hashes in entries("dev.txt"))


def test_demo_lock_is_the_runtime_and_simulator_at_the_dev_versions():
    for python in PYTHONS:
        demo, dev = pins("demo.txt", python), pins("dev.txt", python)
        assert_pinned(demo, requirements("sim"), "demo.txt")
        test_tools = {"pytest", "pytest-django", "playwright", "hypothesis", "factory-boy", "ruff"}
        assert not test_tools & set(demo), test_tools & set(demo)
        assert {k: v for k, (v, _) in demo.items()} == {k: dev[k][0] for k in demo}, "run `make lock`"
    assert all(hashes for *_, hashes in entries("demo.txt"))


def test_installer_is_pinned_and_builds_the_spdx_license():
    tools = pins("tools.txt")
    assert set(tools) == {"uv", "setuptools"} and all(hashes for *_, hashes in entries("tools.txt"))
    build_requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = next(r for r in build_requires if r.name == "setuptools")
    assert setuptools.specifier.contains(tools["setuptools"][0])
    assert not setuptools.specifier.contains("76.9"), "an SPDX license string needs setuptools>=77"


def test_metadata_builds_without_deprecation_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import sys, setuptools.build_meta as b; "
         "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    metadata = (tmp_path / result.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
