"""Text views of the camera branch for the notebooks: parameters per part and an outline of its layers."""

from __future__ import annotations

from torch import nn

from ..tables import Table

PARTS = ("backbone", "neck", "vtransform.dtransform", "vtransform.depthnet", "vtransform.downsample")


HEAD_PARTS = (
    "decoder.backbone",
    "decoder.neck",
    "heads.object.shared_conv",
    *(f"heads.object.task_heads.{t}" for t in range(2)),
)  # the detection head's parts (two tasks)


def parameter_table(model: nn.Module, parts: tuple[str, ...] = PARTS, title: str = "camera branch parameters") -> Table:
    """Parameters and fp32 megabytes of each of ``parts`` (default: the camera branch's; ``HEAD_PARTS`` for the
    detection head; buffers such as the frustum are not parameters), and the whole model's."""
    rows = []
    for part in parts:
        n = sum(p.numel() for p in model.get_submodule(part).parameters())
        rows.append((part, n, round(n * 4 / 1e6, 2)))
    total = sum(p.numel() for p in model.parameters())
    rows.append(("total", total, round(total * 4 / 1e6, 2)))
    return Table(rows, ("part", "parameters", "MB fp32"), title=title)


def layer_outline(module: nn.Module, max_depth: int = 2, prefix: str = "") -> str:
    """The module hierarchy to ``max_depth`` levels, each line ``name: Type (parameters)``."""
    lines = []
    for name, child in module.named_children():
        n = sum(p.numel() for p in child.parameters())
        indent = "  " * prefix.count(".")
        lines.append(f"{indent}{prefix}{name}: {type(child).__name__} ({n:,} params)")
        if prefix.count(".") + 1 < max_depth:
            sub = layer_outline(child, max_depth, f"{prefix}{name}.")
            if sub:
                lines.append(sub)
    return "\n".join(lines)
