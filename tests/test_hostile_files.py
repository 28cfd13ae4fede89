"""Hostile and damaged files through every entry point that reads a file a user may have downloaded.

Each payload, if it ran, would create a marker file. Every case must leave the marker absent and end in one line:
an exception with a one-line message from the API, exit code 2 and one ``bevnb <command>: error: …`` line from the
command line, never a traceback.

The payloads: a ``__reduce__`` that calls ``os.system``, one that calls ``Path.touch``, a ``getattr`` chain
(``getattr(path, "touch")`` rebuilt, then called), and a ``copyreg._reconstructor`` chain whose ``base.__init__`` opens
the marker for writing (``logging.FileHandler``). The containers: a plain pickle; torch's legacy format with the
payload in each of its five pickles (magic number, protocol version, system info, object, storage keys) and in a
persistent id; torch's zip format with the payload in its object pickle and in a persistent id.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

import bevnb
from bevnb import quant
from bevnb.cli import _parser, main
from bevnb.data import load_example_data, make_sample, write_tensor
from bevnb.model import CheckpointError, build_detector, read_checkpoint
from bevnb.rig import FIVE_CAMERA_RIG_PATH

# --- payloads ---------------------------------------------------------------------------------------------------


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Touch(_System):
    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _BoundTouch(_System):
    """Unpickles as the bound method ``marker.touch`` (through ``builtins.getattr``)."""

    def __reduce__(self):
        return (getattr, (self.marker, "touch"))

    def __call__(self) -> None:  # pickle accepts only a callable as a reduce's callable; never called here
        raise AssertionError("the pickled form is what runs")


class _GetattrChain(_System):
    """Unpickles as ``getattr(marker, "touch")()``: the callable of the outer reduce is itself rebuilt."""

    def __reduce__(self):
        return (_BoundTouch(self.marker), ())


class _CopyregChain(_System):
    """Unpickles as ``copyreg._reconstructor(FileHandler, FileHandler, marker)``: ``FileHandler.__init__`` creates
    the file."""

    def __reduce__(self):
        return (copyreg._reconstructor, (logging.FileHandler, logging.FileHandler, str(self.marker)))


PAYLOADS = {"os.system": _System, "Path.touch": _Touch, "getattr chain": _GetattrChain, "copyreg chain": _CopyregChain}


def test_every_payload_runs_when_unpickled_for_real(tmp_path):
    """The payloads are real: the standard library's unpickler runs each of them."""
    for name, payload in PAYLOADS.items():
        marker = tmp_path / name.replace(" ", "-")
        pickle.loads(pickle.dumps(payload(marker), protocol=2))
        assert marker.exists(), name
    logging.shutdown()


# --- containers -------------------------------------------------------------------------------------------------


def _body(data: bytes) -> bytes:
    """A protocol-2 pickle without its PROTO header and STOP."""
    assert data[:2] == b"\x80\x02" and data[-1:] == b"."
    return data[2:-1]


def _with_payload(value: object, payload: object) -> bytes:
    """A pickle that builds ``payload``, discards it (POP) and returns ``value``: what the reader expects."""
    return b"\x80\x02" + _body(pickle.dumps(payload, protocol=2)) + b"0" + _body(pickle.dumps(value, protocol=2)) + b"."


def _persistent(pid: tuple) -> bytes:
    """A pickle whose object is a persistent id (``BINPERSID``) given by ``pid``."""
    return b"\x80\x02" + _body(pickle.dumps(pid, protocol=2)) + b"Q."


_SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}
_LEGACY_PARTS = ("magic", "protocol", "sys_info", "object", "storage_keys")


def _legacy(payload: object, where: str) -> bytes:
    """torch's legacy (non-zip) format, hand-written: five pickles, no storages; ``where`` names the pickle that
    carries the payload (``persistent id``: the object pickle is a persistent id whose tuple holds it)."""
    values = dict(zip(_LEGACY_PARTS, (MAGIC_NUMBER, PROTOCOL_VERSION, _SYS_INFO, {"w": 1}, []), strict=True))
    parts = [_with_payload(v, payload) if k == where else pickle.dumps(v, protocol=2) for k, v in values.items()]
    if where == "persistent id":
        parts[3] = _persistent(("module", payload, "", ""))
    return b"".join(parts)


def _zip(payload: object, where: str, tmp_path: Path) -> bytes:
    """torch's zip format: a real ``torch.save`` whose ``data.pkl`` is replaced (``object``: a dict holding the
    payload beside a tensor; ``persistent id``: a storage id whose tuple holds it)."""
    torch.save({"encoders.camera.backbone.conv1.weight": torch.zeros(2)}, tmp_path / "real.pth")
    with zipfile.ZipFile(tmp_path / "real.pth") as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    name = next(n for n in records if n.endswith("/data.pkl"))
    if where == "object":
        records[name] = _with_payload({"encoders.camera.backbone.conv1.weight": 0}, payload)
    else:
        records[name] = _persistent(("storage", payload, "0", "cpu", 2))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for n, data in records.items():
            dst.writestr(n, data)
    return out.getvalue()


CONTAINERS = ["plain pickle", *(f"legacy {p}" for p in (*_LEGACY_PARTS, "persistent id")), "zip object", "zip pid"]


def _hostile(kind: str, payload: object, tmp_path: Path) -> bytes:
    if kind == "plain pickle":
        return pickle.dumps(payload, protocol=2)
    if kind.startswith("legacy "):
        return _legacy(payload, kind.removeprefix("legacy "))
    return _zip(payload, "object" if kind == "zip object" else "persistent id", tmp_path)


CASES = [(c, p) for c in CONTAINERS for p in PAYLOADS]


@pytest.fixture
def hostile(tmp_path):
    """``hostile(container, payload) → (file, marker)``."""

    def make(container: str, payload: str) -> tuple[Path, Path]:
        marker = tmp_path / "payload-ran"
        path = tmp_path / "EVIL.pth"
        path.write_bytes(_hostile(container, PAYLOADS[payload](marker), tmp_path))
        return path, marker

    return make


def test_the_containers_carry_their_payload_to_torch(hostile):
    """On an unrestricted ``torch.load`` the header payloads run: the files really are hostile."""
    for container in ("plain pickle", "legacy magic", "legacy protocol", "legacy sys_info", "legacy storage_keys"):
        path, marker = hostile(container, "Path.touch")
        with contextlib.suppress(Exception):  # whatever torch makes of the file after the payload ran
            torch.load(path, weights_only=False)
        assert marker.exists(), container
        marker.unlink()


@pytest.mark.parametrize("reader", [read_checkpoint, build_detector], ids=["read_checkpoint", "build_detector"])
@pytest.mark.parametrize(("container", "payload"), CASES)
def test_hostile_checkpoint_runs_nothing_and_fails_in_one_line(hostile, container, payload, reader):
    path, marker = hostile(container, payload)
    with pytest.raises(CheckpointError) as err:
        reader(path)
    assert not marker.exists()
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def _commands_with(option: str) -> list[str]:
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps its subcommands here
    return [name for name, sub in commands.items() if any(option in a.option_strings for a in sub._actions)]


_REQUIRED = {"export": ["--out", "{tmp}/out"]}


def _argv(command: str, option: str, path: Path, tmp_path: Path) -> list[str]:
    extra = [a.format(tmp=tmp_path) for a in _REQUIRED.get(command, [])]
    return [command, option, str(path), *extra]


@pytest.mark.parametrize("container", CONTAINERS)
def test_checkpoint_option_of_every_command_refuses_a_hostile_file(hostile, tmp_path, capsys, container):
    commands = _commands_with("--checkpoint")
    assert "export" in commands
    for command in commands:
        for payload in PAYLOADS:
            path, marker = hostile(container, payload)
            assert main(_argv(command, "--checkpoint", path, tmp_path)) == 2, (command, payload)
            err = capsys.readouterr().err
            assert not marker.exists(), (command, payload)
            assert err.startswith(f"bevnb {command}: error: {path}: ") and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def quantized() -> bevnb.CameraBranch:
    return quant.quantize_camera(bevnb.build_camera_model(seed=0))


@pytest.mark.parametrize("container", CONTAINERS)
def test_hostile_calibration_file_runs_nothing(hostile, quantized, container):
    """``--calibration`` reads with torch's ``weights_only`` unpickler: nothing runs, one-line ValueError."""
    for payload in PAYLOADS:
        path, marker = hostile(container, payload)
        with pytest.raises(ValueError, match=r"not a bevnb calibration file") as err:
            quant.load_calibration(quantized, path)
        assert not marker.exists() and "\n" not in str(err.value)


def test_calibration_option_refuses_a_hostile_file(hostile, tmp_path, capsys):
    path, marker = hostile("plain pickle", "os.system")
    argv = ["export", "--precision", "int8", "--calibration", str(path), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.startswith(f"bevnb export: error: {path}: not a bevnb calibration file") and err.count("\n") == 1


def test_checkpoints_in_every_honest_format_still_load(tmp_path):
    """The restriction costs nothing honest: a state dict in the zip and the legacy format, and an MIT checkpoint,
    load bit for bit."""
    source = bevnb.build_camera_model(seed=3)
    state = source.state_dict()
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {f"encoders.camera.{k}": v for k, v in state.items()}}, tmp_path / "mit.pth")
    for name in ("zip.pth", "legacy.pth", "mit.pth"):
        loaded = read_checkpoint(tmp_path / name).state_dict
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), name


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"state_dict": {1: torch.zeros(1)}}, "keys must be strings"),
        ({"state_dict": {"encoders.camera.backbone.conv1.weight": "w"}}, "backbone.conv1.weight holds a str"),
        ({"encoders.camera.neck.x": torch.zeros(1), "meta": 3}, "holds a dict"),
    ],
)
def test_checkpoint_with_foreign_values_fails_in_one_line(tmp_path, content, reason):
    torch.save(content, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=reason) as err:
        read_checkpoint(tmp_path / "odd.pth")
    assert "\n" not in str(err.value)


# --- ONNX files ---------------------------------------------------------------------------------------------------


def _onnx_with_external_data(tmp_path: Path, location: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    for key, value in (("location", location), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    path = tmp_path / "graphs" / "EVIL.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "external data outside its folder"])
def test_inspect_refuses_a_hostile_onnx_file_in_one_line(tmp_path, capsys, damage):
    if damage == "external data outside its folder":
        (tmp_path / "secret.bin").write_bytes(b"\x00" * 16)
        path = _onnx_with_external_data(tmp_path, "../secret.bin")
    else:
        path = _onnx_with_external_data(tmp_path, "w.bin")
        data = path.read_bytes()
        path.write_bytes(os.urandom(4096) if damage == "random bytes" else data[: len(data) // 2])
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bevnb inspect: error: {path}") and err.count("\n") == 1, err


# --- example-data folders -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    """A valid example-data folder of the default rig (six black 1600×900 JPEGs)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("example-data")
    zeros = make_sample("zeros")
    for key in ("camera_intrinsics", "camera2lidar", "lidar2image", "img_aug_matrix"):
        write_tensor(folder / f"{key}.tensor", zeros[key])
    write_tensor(folder / "points.tensor", torch.tensor([[5.0, 20.0, -1.0, 10.0, 0.0]]).half())
    for i, name in enumerate(bevnb.rig.default_rig().camera_names):
        Image.new("RGB", (1600, 900)).save(folder / f"{i}-{name.removeprefix('CAM_')}.jpg")
    return folder


def _damage_example(folder: Path, target: Path, damage: str) -> Path:
    import shutil

    copy = target / "example-data"
    shutil.copytree(folder, copy)
    if damage == "tensor header lies":  # 2^31 - 1 dims of 2^31 - 1: a product far beyond the file
        raw = bytearray((copy / "camera2lidar.tensor").read_bytes())
        raw[12:28] = b"\xff\xff\xff\x7f" * 4
        (copy / "camera2lidar.tensor").write_bytes(bytes(raw))
    elif damage == "tensor truncated":
        (copy / "points.tensor").write_bytes((copy / "points.tensor").read_bytes()[:14])
    elif damage == "NaN matrix":
        write_tensor(copy / "camera2lidar.tensor", torch.full((1, 6, 4, 4), float("nan")))
    elif damage == "pickle as tensor":
        (copy / "lidar2image.tensor").write_bytes(pickle.dumps(_Touch(target / "payload-ran"), protocol=2))
    elif damage == "image not a JPEG":
        (copy / "0-FRONT.jpg").write_bytes(b"GIF89a" + os.urandom(64))
    elif damage == "image truncated":
        (copy / "1-FRONT_RIGHT.jpg").write_bytes((copy / "1-FRONT_RIGHT.jpg").read_bytes()[:300])
    elif damage == "decompression bomb":  # a PNG header claiming 65535 × 65535 pixels, and nothing else
        (copy / "2-FRONT_LEFT.jpg").write_bytes(_png_header(65535, 65535))
    return copy


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit greyscale) for ``width × height`` pixels, and no pixel data."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


EXAMPLE_DAMAGE = [
    "tensor header lies",
    "tensor truncated",
    "NaN matrix",
    "pickle as tensor",
    "image not a JPEG",
    "image truncated",
    "decompression bomb",
]


@pytest.mark.parametrize("damage", EXAMPLE_DAMAGE)
def test_damaged_example_data_fails_in_one_line(example_folder, tmp_path, capsys, damage):
    folder = _damage_example(example_folder, tmp_path, damage)
    with pytest.raises(ValueError) as err:
        load_example_data(folder)
    assert "\n" not in str(err.value)
    assert main(["validate", "--precision", "fp16", "--example-data", str(folder), "--onnx-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().err
    assert out.startswith("bevnb validate: error: ") and out.count("\n") == 1, out
    assert not (tmp_path / "payload-ran").exists()


def test_the_undamaged_example_folder_loads(example_folder):
    assert load_example_data(example_folder)["img"].shape == (1, 6, 3, 256, 704)


# --- rig files ------------------------------------------------------------------------------------------------------


_REPLACEMENTS = [None, "a string", -1, 0, 1, 1e308, -1e308, float("nan"), float("inf"), [], {}, True, False, 10**400]


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON tree (objects and lists), leaves and inner nodes alike."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = []
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _damage(spec: dict, path: tuple, value: object) -> None:
    node = spec
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DROP = object()
_TOP_FIELDS = ("cameras", "raw_image_size", "test_image_aug", "model", "lidar2ego", "not a readable rig file")


def test_a_rig_damaged_at_random_loads_or_fails_in_one_line_naming_a_field(tmp_path):
    """400 copies of the five-camera rig, each with one or two fields dropped or replaced (fixed seed): each loads
    into a rig whose model fits the package's bounds, or fails with one ``RigError`` line naming the field."""
    import random

    rng = random.Random(17)
    original = json.loads(FIVE_CAMERA_RIG_PATH.read_text())
    paths, outcomes = _paths(original), {"loaded": 0, "refused": 0}
    for n in range(400):
        spec = json.loads(json.dumps(original))
        for _ in range(rng.choice((1, 2))):
            alive = [p for p in _paths(spec) if p[0] not in ("description", "conventions")]
            _damage(spec, rng.choice(alive), rng.choice([_DROP, *_REPLACEMENTS]))
        (tmp_path / "rig.json").write_text(json.dumps(spec))
        try:
            rig = bevnb.load_rig(tmp_path / "rig.json")
        except bevnb.RigError as exc:
            message = str(exc)
            assert "\n" not in message, (n, message)
            assert message.startswith("rig.json: ") and message.removeprefix("rig.json: ").startswith(_TOP_FIELDS), (
                n,
                message,
            )
            outcomes["refused"] += 1
        else:
            config = rig.config
            assert torch.isfinite(rig.intrinsics).all() and torch.isfinite(rig.camera2lidar).all()
            assert config.frustum_points <= bevnb.config.MAX_FRUSTUM_POINTS, n
            assert config.grid_size[0] * config.grid_size[1] * config.grid_size[2] <= bevnb.config.MAX_GRID_CELLS, n
            outcomes["loaded"] += 1
    assert len(paths) > 100
    assert outcomes["refused"] > 250 and outcomes["loaded"] > 10, outcomes
