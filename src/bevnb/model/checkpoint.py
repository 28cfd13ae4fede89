"""Reading BEVFusion checkpoints without mmcv, mmdet3d or torchpack, and loading them strictly.

Four kinds of file hold camera weights:

* ``mit``: a MIT BEVFusion checkpoint, ``{"state_dict": {...}, "meta": ...}`` with the whole fusion model's keys
  (``encoders.camera.*``, ``encoders.lidar.*``, ``fuser.*``, ``decoder.*``, ``heads.*``);
* ``state_dict``: a plain dict of camera tensors, with or without the ``encoders.camera.`` prefix;
* ``trained``: what ``training/train.py`` writes (``data/training/weights.pth``): a MIT-layout file whose
  ``meta["backbone_seed"]`` stands for the backbone and neck it leaves out (frozen during training, they are
  regenerated from that seed, ``build_camera_model``);
* ``ptq``: CUDA-BEVFusion's ``bevfusion_ptq.pth``, a ``torch.save`` of the whole ``MMDataParallel`` module, with
  BatchNorm folded into the convs and quantizer ``_amax`` buffers. Unpickling it normally needs mmdet3d,
  pytorch_quantization and ``lean`` importable, and runs whatever the pickle names. bevnb reads it with a restricted
  unpickler that rebuilds tensors and plain containers only: every other class becomes an inert stand-in whose
  state is kept as data, so no code from the file runs.

Every pickle torch reads goes through that unpickler: the object pickle (``pickle_module.Unpickler``) and the
legacy format's header and storage-key pickles (``pickle_module.load``, which upstream's recipe of passing a module
with a custom ``Unpickler`` leaves unrestricted). What the allow-list lets the file call is the tensor rebuild (with
backward hooks and a parameter's Python state dropped), plain containers, ``torch.Size``/``torch.device`` and the
dtypes. ``tests/test_hostile_files.py`` writes hostile files in every container and checks that nothing runs.
"""

from __future__ import annotations

import copyreg
import hashlib
import pickle
import warnings
from collections import OrderedDict
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
    ``bevnb.quant``; ``bn_folded`` says the convs already carry their BatchNorm; ``backbone_seed`` is a trained
    file's ``meta["backbone_seed"]`` (``None`` for the other kinds).
    """

    kind: str
    state_dict: dict[str, Tensor]
    amax: dict[str, Tensor] = field(default_factory=dict)
    bn_folded: bool = False
    backbone_seed: int | None = None


def read_checkpoint(path: str | Path) -> CameraCheckpoint:
    """Read any of the four kinds; a missing, truncated or foreign file raises ``CheckpointError``."""
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
        raise unreadable_checkpoint(path, exc) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        seed = backbone_seed(path, obj.get("meta"))
        ckpt = _from_flat(path, "mit" if seed is None else "trained", obj["state_dict"])
        ckpt.backbone_seed = seed
        return ckpt
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return _from_flat(path, "state_dict", obj)
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a BEVFusion checkpoint or state dict")


def backbone_seed(path: Path, meta: object) -> int | None:
    """A checkpoint's ``meta["backbone_seed"]`` (``None`` without one), or one ``CheckpointError`` line when it is
    not an integer in ``[0, 2**63)``."""
    seed = meta.get("backbone_seed") if isinstance(meta, dict) else None
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise CheckpointError(f"{path}: meta['backbone_seed'] must be an integer in [0, 2**63), found {seed!r:.40}")
    return seed


def _checked_flat(path: Path, flat: dict) -> dict[str, Tensor]:
    """``flat`` if every key is a string and every camera value a tensor, else one ``CheckpointError`` line."""
    if not all(isinstance(k, str) for k in flat):
        bad = next(k for k in flat if not isinstance(k, str))
        raise CheckpointError(f"{path}: state-dict keys must be strings, found {type(bad).__name__} {bad!r:.40}")
    for key, value in flat.items():
        camera = key.split(".")[0] in CAMERA_PARTS or key.startswith(CAMERA_PREFIX)
        if camera and not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: {key} holds a {type(value).__name__}, not a tensor")
    return flat


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
    flat = _checked_flat(path, flat)
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


def _rebuild_tensor(
    storage: object,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: object,
    metadata: object = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2`` without the file's backward hooks (they would be callables from it)."""
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict(), metadata)


def _rebuild_parameter(data: Tensor, requires_grad: bool, backward_hooks: object, state: object = None) -> Tensor:
    """``torch._utils._rebuild_parameter`` (and ``…_with_state``) keeping the data only: no hooks, and no Python
    state set as attributes."""
    return torch._utils._rebuild_parameter(data, requires_grad, OrderedDict())


# (module, name) → what the file may call; everything else becomes a StandIn
_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
} | {("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


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
    return type(str(name), (StandIn,), {"qualified_name": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    """Imports nothing: ``find_class`` answers from ``_ALLOWED_GLOBALS`` or with a stand-in class. Without a
    ``persistent_load`` (torch sets one on its object pickle only), a persistent id is an ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> object:
        return _ALLOWED_GLOBALS.get((module, name)) or _stand_in(module, name)


def _restricted_pickle_load(file: object, **kwargs: object) -> object:
    return _RestrictedUnpickler(file, **kwargs).load()


class _RestrictedPickle:
    """The ``pickle_module`` handed to ``torch.load``: torch's own storage handling, our ``find_class`` for every
    pickle it reads, through ``Unpickler`` and ``load`` alike."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(_restricted_pickle_load)
    __name__ = "bevnb_restricted_pickle"


def _restricted_load(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about the (stand-in) container sources of a legacy file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except Exception as exc:  # any failure of a foreign pickle is a bad file, never a crash
        raise unreadable_checkpoint(path, exc) from None


def _module_tensors(root: object) -> dict[str, Tensor]:
    """Flatten a pickled module tree (stand-ins whose state has ``_parameters``/``_buffers``/``_modules``) into
    ``{dotted.name: tensor}``, as ``state_dict()`` would name it. Shared submodules appear under every name; a
    cycle or anything that is not a module's state is skipped. Iterative: a deep tree cannot overflow the stack."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, str]] = set()
    todo = [(root, "")]
    while todo:
        obj, prefix = todo.pop()
        state = getattr(obj, "state", None) if isinstance(obj, StandIn) else None
        if not isinstance(state, dict) or (id(obj), prefix) in seen:
            continue
        seen.add((id(obj), prefix))
        for group in ("_parameters", "_buffers"):
            members = state.get(group)
            for name, value in members.items() if isinstance(members, dict) else ():
                if isinstance(value, Tensor):
                    out[f"{prefix}{name}"] = value.detach()
        children = state.get("_modules")
        for name, child in children.items() if isinstance(children, dict) else ():
            todo.append((child, f"{prefix}{name}."))
    return out


def _from_module_pickle(path: Path, obj: object) -> CameraCheckpoint:
    flat = _module_tensors(obj)
    camera = {k[k.index(CAMERA_PREFIX) :]: v for k, v in flat.items() if CAMERA_PREFIX in k}
    if not camera:
        found = getattr(obj, "qualified_name", type(obj).__name__)
        raise CheckpointError(f"{path}: a pickled {found} without camera weights (no {CAMERA_PREFIX}* module)")
    return _from_flat(path, "ptq", camera)


def unreadable_checkpoint(path: Path, exc: BaseException) -> CheckpointError:
    """The one-line error for a file torch cannot read (truncated zip, text, random bytes, a refused pickle …):
    torch raises many types, and all of them mean a bad file."""
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_error_summary(exc)})")


def _error_summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
