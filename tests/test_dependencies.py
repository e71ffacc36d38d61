"""Every third-party package hpsearch imports is declared in setup.cfg with an upper bound,
the pinned constraints name every declared one, and the installed set is consistent."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "pydantic_core": "pydantic-core",
                 "typing_extensions": "typing-extensions", "sqlalchemy": "sqlalchemy",
                 "pynvml": "nvidia-ml-py"}


def _requirements(section: str = "install_requires") -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"][section] if section == "install_requires" else (
        config["options.extras_require"][section])
    specs = {}
    for line in lines.strip().splitlines():
        if line.strip() and not line.strip().startswith("#"):
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^]]*\])?(.*)", line.strip()).groups()
            specs[name.lower()] = spec
    return specs


def _imported_packages() -> set[str]:
    names = set()
    for path in (ROOT / "hpsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "hpsearch"}


def test_every_import_is_declared_with_an_upper_bound() -> None:
    declared = _requirements()
    for name in sorted(_imported_packages()):
        distribution = DISTRIBUTIONS.get(name, name).lower()
        assert distribution in declared, f"{name} is imported but {distribution} not declared"
    for distribution, spec in declared.items():
        assert ">=" in spec and "<" in spec.replace("<=", ""), f"{distribution}{spec}"


def test_constraints_pin_every_declared_distribution() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    needed = {**_requirements(), **_requirements("test"), **_requirements("postgres")}
    for distribution in needed:
        assert distribution.replace("_", "-") in pins, f"{distribution} not in constraints.txt"


def test_installed_distributions_have_no_broken_requirements() -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
