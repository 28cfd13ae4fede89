"""Your own checkpoint, rig and calibration frames (``bevnb.inputs``): the environment variables, the CLI options,
the calibration that follows the model's rig, and two chapters run end to end on another checkpoint and rig."""

from __future__ import annotations

import json

import nbformat
import pytest
import torch

import bevnb
from bevnb import inputs
from bevnb.paths import TRAINED_WEIGHTS
from bevnb.rig import FIVE_CAMERA_RIG_PATH, RIG_PATH


@pytest.fixture
def clean_env(monkeypatch):
    for name in (inputs.ENV_CHECKPOINT, inputs.ENV_RIG, inputs.ENV_FRAMES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_without_environment(clean_env):
    chosen = inputs.current()
    assert chosen.checkpoint == TRAINED_WEIGHTS and chosen.trained
    assert chosen.rig_path.resolve() == RIG_PATH.resolve() and chosen.rig.config == bevnb.R50
    assert (chosen.frames.count, chosen.frames.synthetic) == (inputs.DEFAULT_CALIB_SAMPLES, True)
    assert "(the shipped trained weights)" in chosen.describe()


def test_seeded_names_the_untrained_init(clean_env):
    clean_env.setenv(inputs.ENV_CHECKPOINT, inputs.SEEDED)
    chosen = inputs.current()
    assert chosen.checkpoint is None and not chosen.trained
    assert "untrained seeded init (seed 0)" in chosen.describe()
    seeded = bevnb.build_camera_model(seed=0)
    assert all(torch.equal(v, seeded.state_dict()[k]) for k, v in chosen.model().state_dict().items())


def test_environment_chooses_checkpoint_rig_and_frames(clean_env, tmp_path):
    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(b"not read until a model is built")
    clean_env.setenv(inputs.ENV_CHECKPOINT, str(ckpt))
    clean_env.setenv(inputs.ENV_RIG, str(FIVE_CAMERA_RIG_PATH))
    clean_env.setenv(inputs.ENV_FRAMES, "3")
    chosen = inputs.current()
    assert chosen.checkpoint == ckpt and chosen.rig.num_cameras == 5 and chosen.frames.count == 3
    text = chosen.describe()
    assert str(ckpt) in text and "5 cameras" in text and "3 synthetic scenes of rig five_camera_rig" in text
    assert inputs.current(rig=RIG_PATH, frames=1).rig.num_cameras == 6  # an argument wins over the environment


@pytest.mark.parametrize(
    ("spec", "message"),
    [("0", "at least one"), ("no/such/folder", "neither a number"), (".", "holds no example-data folder")],
)
def test_bad_frames_fail_in_one_line(clean_env, spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        inputs.current(frames=spec)


def test_a_missing_checkpoint_fails_in_one_line(clean_env, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        inputs.current(checkpoint=tmp_path / "missing.pth")


def test_example_data_folders_are_frames(clean_env, tmp_path):
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "camera_intrinsics.tensor").write_bytes(b"")
    frames = inputs.frames_from(tmp_path, bevnb.load_rig())
    assert [f.name for f in frames.folders] == ["a", "b"] and not frames.synthetic
    assert "2 frames of rig nuscenes_rig" in str(frames) and frames.tag.startswith("frames2-")
    assert inputs.frames_from(tmp_path / "a", bevnb.load_rig()).count == 1


def test_calibration_scenes_follow_the_model_rig(clean_env):
    five = bevnb.load_rig(FIVE_CAMERA_RIG_PATH)
    assert inputs.frames_for(bevnb.R50, 2).rig.num_cameras == 6
    with pytest.raises(ValueError, match="Frames of its rig"):  # neither the default rig nor $BEVNB_RIG fits
        inputs.frames_for(five.config, 2)
    clean_env.setenv(inputs.ENV_RIG, str(FIVE_CAMERA_RIG_PATH))
    frames = inputs.frames_for(five.config, 1)
    img, depth = next(iter(frames))
    assert frames.rig.num_cameras == 5 and list(img.shape) == [1, 5, 3, 384, 1056] and depth.shape[1] == 5


def test_every_model_command_takes_the_inputs_options():
    from bevnb.cli import _parser

    parser = _parser()
    for command in ("export --out x", "validate", "sensitivity"):
        args = parser.parse_args([*command.split(), "--checkpoint", "c.pth", "--rig", "r.json"])
        args = parser.parse_args([*command.split(), "--calibration-frames", "3"])
        assert args.calibration_frames == "3" and args.checkpoint is None


def _printed(nb: nbformat.NotebookNode) -> str:
    """Everything the executed chapter printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            for kind in ("text/plain", "text/html", "text/markdown"):
                parts.append(out.get("data", {}).get(kind, ""))
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


@pytest.mark.notebooks
def test_chapters_run_on_another_checkpoint_and_the_five_camera_rig(clean_env, tmp_path):
    """Chapters 01 and 02 end to end with BEVNB_CHECKPOINT (a seed-3 state dict written here) and BEVNB_RIG (the
    five-camera rig): the banner names both, the shapes are the five cameras' 384×1056 ones."""
    from bevnb.chapters import execute

    ckpt = tmp_path / "seed3-camera.pth"
    torch.save(bevnb.build_camera_model(seed=3).state_dict(), ckpt)
    clean_env.setenv(inputs.ENV_CHECKPOINT, str(ckpt))
    clean_env.setenv(inputs.ENV_RIG, str(FIVE_CAMERA_RIG_PATH))
    clean_env.setenv("BEVNB_BUILD_DIR", str(tmp_path / "build"))
    seconds = {}
    for name, shapes in (
        ("01_load_model", ("[1, 5, 1, 384, 1056]", "[5, 48, 132, 80]", "[1, 80, 256, 128]")),
        ("02_dummy_data", ("[1, 5, 3, 384, 1056]", "[1, 5, 4, 4]")),
    ):
        seconds[name] = execute(name, tmp_path / "executed")
        text = _printed(nbformat.read(tmp_path / "executed" / f"{name}.ipynb", as_version=4))
        assert f"checkpoint:         {ckpt}" in text, name
        assert "five_camera_rig" in text and "5 cameras, input 384×1056, BEV grid 256×128" in text, name
        for shape in shapes:
            assert shape in text, (name, shape)
    print(json.dumps({k: round(v, 1) for k, v in seconds.items()}))


def test_frames_in_upstream_example_data_layout_feed_the_calibration(clean_env, tmp_path):
    from test_data import _write_example_data

    zeros = bevnb.make_sample("zeros")
    for name in ("frame0", "frame1"):
        (tmp_path / name).mkdir()
        _write_example_data(tmp_path / name, zeros, torch.tensor([[10.0, 20.0, -1.5, 30.0, 0.0]]))
    clean_env.setenv(inputs.ENV_FRAMES, str(tmp_path))
    frames = inputs.current().frames
    assert (frames.count, frames.synthetic) == (2, False) and f"from {tmp_path}/*" in str(frames)
    pairs = list(frames)
    assert len(pairs) == 2 and [list(t.shape) for t in pairs[0]] == [[1, 6, 3, 256, 704], [1, 6, 1, 256, 704]]


@pytest.mark.slow
def test_int8_export_for_another_rig_calibrates_on_that_rig(clean_env, tmp_path, capsys):
    """The bug this replaces: ``bevnb export --precision int8 --rig …`` calibrated on the default rig's scenes."""
    from bevnb.cli import main

    out = tmp_path / "onnx"
    argv = ["export", "--precision", "int8", "--rig", str(FIVE_CAMERA_RIG_PATH), "--calibration-frames", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibrated (mse) on 1 synthetic scene of rig five_camera_rig (seed 0, rendered)" in printed
    assert "5 cameras, input 384×1056" in printed and (out / "camera.backbone.onnx").is_file()
