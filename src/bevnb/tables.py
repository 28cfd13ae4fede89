"""Tables that print as aligned text in a terminal and render as HTML in Jupyter (no pandas needed)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence

import torch


def format_value(value: object) -> str:
    """Shapes as ``[6, 32, 88, 80]``, floats to 4 significant digits, the rest as ``str``."""
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, tuple | list) or type(value).__name__ == "Size":
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


class Table:
    """``Table(rows, columns, title)``; ``print(t)`` gives text, a notebook cell ending in ``t`` gives HTML."""

    def __init__(self, rows: Iterable[Sequence[object]], columns: Sequence[str], title: str = "") -> None:
        self.columns = list(columns)
        self.rows = [[format_value(v) for v in row] for row in rows]
        self.title = title

    def __str__(self) -> str:
        cols = list(zip(self.columns, *self.rows, strict=True))
        widths = [max(len(c) for c in col) for col in cols]
        numeric = [all(_is_number(c) for c in col[1:]) and len(col) > 1 for col in cols]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
            )

        out = [self.title] if self.title else []
        out += [line(self.columns), "  ".join("-" * w for w in widths), *(line(r) for r in self.rows)]
        return "\n".join(line.rstrip() for line in out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self.rows)
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def shape_table(tensors: Mapping[str, torch.Tensor], title: str = "") -> Table:
    """One row per named tensor: shape, dtype and size in MB."""
    rows = [
        (name, list(t.shape), str(t.dtype).removeprefix("torch."), t.numel() * t.element_size() / 1e6)
        for name, t in tensors.items()
    ]
    return Table(rows, ("tensor", "shape", "dtype", "MB"), title)


class CodeColumns:
    """Source code of several objects side by side (HTML in Jupyter, one after another as text)."""

    def __init__(self, **objects: object) -> None:
        import inspect

        self.sources = {title: inspect.getsource(obj) for title, obj in objects.items()}

    def __str__(self) -> str:
        return "\n\n".join(f"# --- {title}\n{code}" for title, code in self.sources.items())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cells = "".join(
            f'<td style="vertical-align:top;text-align:left"><b>{html.escape(title)}</b>'
            f'<pre style="font-size:11px">{html.escape(code)}</pre></td>'
            for title, code in self.sources.items()
        )
        return f"<table><tr>{cells}</tr></table>"
