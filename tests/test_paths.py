"""Where bevnb finds its data and puts what it generates: in a checkout, and installed from a wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from bevnb import paths

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_is_found_above_the_package():
    assert paths.CHECKOUT == REPO_ROOT
    assert paths.DATA_DIR == REPO_ROOT / "data" and (paths.DATA_DIR / "nuscenes_rig.json").is_file()


def _package(root: Path, pyproject_name: str | None) -> Path:
    package = root / "src" / "bevnb"
    package.mkdir(parents=True)
    if pyproject_name:
        (root / "pyproject.toml").write_text(f'[project]\nname = "{pyproject_name}"\n')
    return package


def test_find_checkout_needs_a_pyproject_naming_bevnb(tmp_path):
    assert paths.find_checkout(_package(tmp_path / "mine", "bevnb")) == tmp_path / "mine"
    assert paths.find_checkout(_package(tmp_path / "other", "not-bevnb")) is None
    assert paths.find_checkout(_package(tmp_path / "bare", None)) is None
    site = tmp_path / "venv" / "lib" / "site-packages" / "bevnb"
    site.mkdir(parents=True)
    assert paths.find_checkout(site) is None


def test_build_root_env_then_checkout_then_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BEVNB_BUILD_DIR", str(tmp_path / "elsewhere"))
    assert paths.build_dir("onnx", "fp16") == tmp_path / "elsewhere" / "onnx" / "fp16"
    assert (tmp_path / "elsewhere" / "onnx" / "fp16").is_dir()
    monkeypatch.delenv("BEVNB_BUILD_DIR")
    assert paths.build_root() == REPO_ROOT / "build"
    monkeypatch.setattr(paths, "CHECKOUT", None)  # what a non-editable install sees
    monkeypatch.chdir(tmp_path)
    assert paths.build_root() == tmp_path / "build"


def test_pyproject_lists_every_package_and_maps_data_into_the_wheel():
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    src = REPO_ROOT / "src"
    on_disk = {".".join(p.parent.relative_to(src).parts) for p in src.glob("bevnb/**/__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"bevnb._data"}
    assert setuptools["package-dir"] == {"": "src", "bevnb._data": "data"}
    data = REPO_ROOT / "data"
    shipped = {p.relative_to(data) for p in data.rglob("*") if p.is_file()}
    patterns = setuptools["package-data"]["bevnb._data"]
    assert shipped and all(any(path.match(pattern) for pattern in patterns) for path in shipped), shipped


@pytest.mark.slow
def test_a_wheel_ships_the_data_and_builds_under_the_working_directory(tmp_path):
    """Build the wheel from a copy of the sources, unpack it, and import bevnb from there."""
    pytest.importorskip("setuptools", reason="building a wheel offline needs setuptools in the environment")
    source, site, work = tmp_path / "source", tmp_path / "site", tmp_path / "work"
    for folder in ("src", "data"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO_ROOT / name).is_file():
            shutil.copy(REPO_ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*pip_wheel, str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("bevnb-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "bevnb/_data/nuscenes_rig.json" in archive.namelist()
        archive.extractall(site)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "BEVNB_BUILD_DIR"} | {"PYTHONPATH": str(site)}

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)

    probe = run(
        "import json; from bevnb import paths; from bevnb.rig import load_rig; print(json.dumps(["
        "paths.__file__, paths.CHECKOUT, str(paths.DATA_DIR), str(paths.build_root()), len(load_rig().camera_names)]))"
    )
    assert json.loads(probe.stdout) == [
        str(site / "bevnb" / "paths.py"),
        None,
        str(site / "bevnb" / "_data"),
        str(work / "build"),
        6,
    ]
    bench = run("import sys; from bevnb.cli import main; sys.exit(main(['bench', 'bevpool']))")
    assert bench.returncode == 2 and bench.stderr.startswith("bevnb bench: error: ") and bench.stderr.count("\n") == 1
