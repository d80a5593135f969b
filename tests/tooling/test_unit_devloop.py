"""The contributor's loop installs from requirements-dev.txt without building the package; it
must ask for what pyproject.toml declares, or scripts/check.sh would test against other tools
than CI."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"pre-commit>=3"}  # runs the hooks; not needed by the tests themselves


def test_requirements_dev_are_the_dependencies_and_the_test_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    wanted = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(wanted) == len(set(wanted)), "a requirement is listed twice"
    assert set(wanted) - DEV_ONLY == set(declared)
    assert DEV_ONLY <= set(wanted)
