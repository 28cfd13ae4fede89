"""Reading BEVFusion checkpoints without mmcv, mmdet3d or torchpack, and loading them strictly.

Three kinds of file hold camera weights:

* ``mit``: a MIT BEVFusion checkpoint, ``{"state_dict": {...}, "meta": ...}`` with the whole fusion model's keys
  (``encoders.camera.*``, ``encoders.lidar.*``, ``fuser.*``, ``decoder.*``, ``heads.*``);
* ``state_dict``: a plain dict of camera tensors, with or without the ``encoders.camera.`` prefix;
* ``ptq``: CUDA-BEVFusion's ``bevfusion_ptq.pth``, a ``torch.save`` of the whole ``MMDataParallel`` module, with
  BatchNorm folded into the convs and quantizer ``_amax`` buffers. Unpickling it normally needs mmdet3d,
  pytorch_quantization and ``lean`` importable, and runs whatever the pickle names. bevnb reads it with a restricted
  unpickler that rebuilds tensors and plain containers only: every other class becomes an inert stand-in whose
  state is kept as data, so no code from the file runs.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

CAMERA_PREFIX = "encoders.camera."
CAMERA_PARTS = ("backbone", "neck", "vtransform")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the camera branch (one-line message)."""


@dataclass
class CameraCheckpoint:
    """Camera weights read from a file: keys without the ``encoders.camera.`` prefix.

    ``amax`` holds quantizer calibration (``<module>._input_quantizer._amax`` …) from a PTQ checkpoint, for
    ``bevnb.quant``; ``bn_folded`` says the convs already carry their BatchNorm.
    """

    kind: str
    state_dict: dict[str, Tensor]
    amax: dict[str, Tensor] = field(default_factory=dict)
    bn_folded: bool = False


def read_checkpoint(path: str | Path) -> CameraCheckpoint:
    """Read any of the three kinds; a missing, truncated or foreign file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses class references: the PTQ pickle of a whole module lands here.
        obj = _restricted_load(path)
        return _from_module_pickle(path, obj)
    except Exception as exc:  # truncated zip, text, random bytes: torch raises many types; all mean "bad file"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_error_summary(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return _from_flat(path, "mit", obj["state_dict"])
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return _from_flat(path, "state_dict", obj)
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a BEVFusion checkpoint or state dict")


def load_camera_state(model: nn.Module, state_dict: dict[str, Tensor], derived: Collection[str] = ()) -> str:
    """Load the learned tensors strictly, or raise one ``CheckpointError`` naming every missing, unexpected and
    mis-shaped key (and load nothing).

    ``derived`` keys (buffers computed from the configuration, e.g. the grid constants and the frustum) are not
    loaded: the model keeps its own, so a checkpoint made for another input size or grid fits. Returns a one-line
    notice naming those that differ, from what to what (``""`` when none does)."""
    own = model.state_dict()
    learned = {k: v for k, v in state_dict.items() if k not in derived}
    problems = key_mismatch(
        {k: tuple(v.shape) for k, v in own.items() if k not in derived}, {k: tuple(v.shape) for k, v in learned.items()}
    )
    if problems:
        raise CheckpointError(f"checkpoint does not fit the camera branch: {problems}")
    changed = [
        f"{k} {_brief(state_dict[k])} → {_brief(own[k])}"
        for k in derived
        if k in state_dict and not _same(state_dict[k], own[k])
    ]
    model.load_state_dict(learned, strict=False)  # the keys were checked above; only the derived ones stay
    return f"checkpoint made for another configuration; rebuilt from this one: {', '.join(changed)}" if changed else ""


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.to(b), b)


def _brief(t: Tensor) -> str:
    """A buffer in a few characters: its values when it has at most 3, else its shape."""
    return f"({', '.join(f'{v:g}' for v in t.tolist())})" if t.numel() <= 3 else str(list(t.shape))


def key_mismatch(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]], shown: int = 8) -> str:
    """``""`` when ``given`` has exactly the keys and shapes of ``expected``, else one line:
    ``missing (n): …; unexpected (n): …; mis-shaped (n): key [given]≠[expected]`` (the first ``shown`` of each)."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    misshaped = sorted(
        f"{k} {list(given[k])}≠{list(expected[k])}" for k in expected.keys() & given.keys() if given[k] != expected[k]
    )
    return "; ".join(
        f"{name} ({len(keys)}): {', '.join(keys[:shown])}{' …' if len(keys) > shown else ''}"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if keys
    )


def _from_flat(path: Path, kind: str, flat: dict[str, Tensor]) -> CameraCheckpoint:
    if any(k.startswith(CAMERA_PREFIX) for k in flat):
        flat = {k[len(CAMERA_PREFIX) :]: v for k, v in flat.items() if k.startswith(CAMERA_PREFIX)}
    if not any(k.split(".")[0] in CAMERA_PARTS for k in flat):
        raise CheckpointError(f"{path}: no camera weights (no key under {CAMERA_PREFIX!r} or {'/'.join(CAMERA_PARTS)})")
    weights = {k: v for k, v in flat.items() if "_quantizer." not in k}
    amax = {k: v for k, v in flat.items() if "_quantizer." in k}
    folded = "backbone.conv1.bias" in weights and "backbone.bn1.weight" not in weights
    return CameraCheckpoint(kind=kind, state_dict=weights, amax=amax, bn_folded=folded)


def state_digest(module: nn.Module, skip_amax: bool = False) -> str:
    """SHA-1 of every tensor in ``state_dict()`` (weights, buffers and, unless ``skip_amax``, quantizer amax), in
    order: what an exported graph or a saved calibration was made from."""
    digest = hashlib.sha1()
    for key, value in module.state_dict().items():
        if not (skip_amax and key.endswith("._amax")):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- the restricted unpickler ---------------------------------------------------------------------------------

_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
}


class StandIn:
    """An object of a class bevnb does not import (``mmdet3d…``, ``pytorch_quantization…``): it keeps its
    constructor arguments and pickled state as plain data and has no behaviour."""

    qualified_name = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs, self.state = args, kwargs, {}

    def __call__(self, *args: object, **kwargs: object) -> StandIn:
        # A pickle may call what it built (``getattr(cls, name)(…)``): the result is just another inert stand-in.
        return StandIn(*args, **kwargs)

    def __setstate__(self, state: object) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}


def _stand_in(module: str, name: str) -> type:
    return type(name, (StandIn,), {"qualified_name": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _TENSOR_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stand_in(module, name)


class _RestrictedPickle:
    """The ``pickle_module`` handed to ``torch.load``: torch's own storage handling, our ``find_class``."""

    Unpickler = _RestrictedUnpickler
    load = pickle.load
    __name__ = "bevnb_restricted_pickle"


def _restricted_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except Exception as exc:  # any failure of a foreign pickle is a bad file, never a crash
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_error_summary(exc)})") from None


def _module_tensors(obj: object, prefix: str, out: dict[str, Tensor], seen: set[tuple[int, str]]) -> None:
    """Flatten a pickled module tree (stand-ins whose state has ``_parameters``/``_buffers``/``_modules``) into
    ``{dotted.name: tensor}``, as ``state_dict()`` would name it. Shared submodules appear under every name."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict) or (id(obj), prefix) in seen:
        return
    seen.add((id(obj), prefix))
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, Tensor):
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_tensors(child, f"{prefix}{name}.", out, seen)


def _from_module_pickle(path: Path, obj: object) -> CameraCheckpoint:
    flat: dict[str, Tensor] = {}
    _module_tensors(obj, "", flat, set())
    camera = {k[k.index(CAMERA_PREFIX) :]: v for k, v in flat.items() if CAMERA_PREFIX in k}
    if not camera:
        found = getattr(obj, "qualified_name", type(obj).__name__)
        raise CheckpointError(f"{path}: a pickled {found} without camera weights (no {CAMERA_PREFIX}* module)")
    return _from_flat(path, "ptq", camera)


def _error_summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
