"""environment.yml, pyproject.toml and the Makefile agree on what gets installed."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_this_package_with_existing_extras():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip_section == ["-e .[dev]"]
    extras = set(_pyproject()["project"]["optional-dependencies"])
    assert set(re.findall(r"\[(.*)\]", pip_section[0])[0].split(",")) <= extras
    minimum = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.removeprefix("python=").split("."))) >= tuple(map(int, minimum.split(".")))


def test_torch_and_pytorch_quantization_are_pinned_exactly():
    deps = _pyproject()["project"]["dependencies"]
    assert "torch==2.13.0" in deps  # a range would pull a multi-GB CUDA build into a fresh CPU venv
    assert "pytorch-quantization==2.1.3" in deps  # the only real wheel on PyPI
    assert not any(d.startswith("netron") and "==" in d for d in deps)  # Netron refuses builds older than 180 days


def test_makefile_installs_the_extras_environment_yml_names():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "pip install -q -e '.[dev]'" in makefile


def test_dev_installs_the_modelopt_extra_without_its_gpu_onnx_extra():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert "modelopt" in re.findall(r"bevnb\[(.*)\]", extras["dev"][0])[0].split(",")
    assert any(d.startswith("nvidia-modelopt>=") for d in extras["modelopt"])
    assert not any(d.startswith("nvidia-modelopt[") for d in extras["modelopt"])  # [onnx] pulls onnxruntime-gpu
