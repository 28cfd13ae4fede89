"""Static SVG drawings of an ONNX graph, top to bottom, Q/DQ in orange: one box per node for a small graph or one
module, one box per module (edges labelled with the shapes they carry) for a large one. ``Svg`` shows inline in
Jupyter and on GitHub, no graphviz needed.

The layered (Sugiyama) layout is igraph's ``layout_sugiyama``: it orders each layer to reduce crossings and routes
edges that span several layers through dummy points. bevnb chooses the layers itself: each box sits right above
its first reader (``_layers``), so a weight's Q/DQ pair stands next to its conv instead of at the top of the page.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import igraph
import numpy as np
import onnx
from onnx import numpy_helper

from .graphs import (
    QDQ_OPS,
    TensorInfo,
    crossings,
    graph_inputs,
    node_paths,
    part_labels,
    scope_of,
    shape_text,
    stored_tensors,
    tensor_readers,
    tensor_shapes,
    top_ops_text,
)

NODE_LEVEL_MAX = 60  # draw(model) shows every node of a graph up to this size, else one box per part


class Svg:
    """An SVG drawing: shows inline in Jupyter (``_repr_svg_``), ``save(path)`` writes it, ``text`` is the XML."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_svg_(self) -> str:
        return self.text

    def __repr__(self) -> str:
        root = ET.fromstring(self.text)
        return f"<Svg {root.get('width')}×{root.get('height')} px, {self.text.count('<rect')} boxes>"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.text, encoding="utf-8")
        return path


def draw(model: onnx.ModelProto, module: str | None = None, depth: int | None = None) -> Svg:
    """A top-to-bottom drawing of the graph, Q/DQ in orange.

    * ``module`` (a scope such as ``"depthnet"`` or ``"backbone/layer1/layer1.0"``): every node of that module,
      with its output shape, and the tensors that enter and leave it;
    * ``depth``: one box per module ``depth`` scope levels deep (1: the parts, see ``graphs.parts``), edges
      labelled with the shapes of the tensors they carry;
    * neither: every node for a graph of at most ``NODE_LEVEL_MAX`` nodes, else the parts.
    """
    shapes = tensor_shapes(model)
    paths = node_paths(model)
    if module is not None:
        scope = scope_of(module + "/")
        selected = [i for i, path in enumerate(paths) if path[: len(scope)] == scope]
        if not selected:
            known = ", ".join(dict.fromkeys(path[0] for path in paths if path[0]))
            raise ValueError(f"no node under scope {module!r}; the top-level scopes are {known}")
        return _draw_nodes(model, selected, shapes)
    if depth is None and len(paths) <= NODE_LEVEL_MAX:
        return _draw_nodes(model, list(range(len(paths))), shapes)
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be ≥ 1, got {depth}")
    return _draw_modules(model, paths, depth or 1, shapes)


_FILL = {  # (fill, stroke)
    "part": ("#e8f0fe", "#4a6fa5"),
    "quantized": ("#e8f0fe", "#d9822b"),  # a module that holds Q/DQ nodes
    "qdq": ("#fde2c8", "#d9822b"),
    "io": ("#eeeeee", "#777777"),
}
_CHAR_W, _LINE_H, _PAD, _GAP_X = 6.6, 15, 8, 24  # 11 px monospace text


@dataclass
class _Box:
    lines: list[str]
    style: str  # a _FILL key
    title: str
    x: float = 0.0
    y: float = 0.0

    @property
    def width(self) -> float:
        return max(len(line) for line in self.lines) * _CHAR_W + 2 * _PAD

    @property
    def height(self) -> float:
        return len(self.lines) * _LINE_H + _PAD


def _draw_modules(
    model: onnx.ModelProto, paths: list[tuple[str, ...]], depth: int, shapes: dict[str, TensorInfo]
) -> Svg:
    """One box per module ``depth`` levels deep (a node directly in a shallower module gets its own box), one edge
    per pair of boxes, labelled with up to three shapes of the tensors it carries."""
    labels = part_labels(model, paths)
    groups = [path[:depth] if len(path) >= depth else (*path, f"#{i}") for i, path in enumerate(paths)]
    members: dict[tuple[str, ...], list[onnx.NodeProto]] = {}
    for node, group in zip(model.graph.node, groups, strict=True):
        members.setdefault(group, []).append(node)
    boxes: dict[object, _Box] = {}
    for v in graph_inputs(model):
        boxes[("in", v.name)] = _Box([v.name, shape_text(shapes[v.name].shape)], "io", "graph input")
    for group, nodes in members.items():
        ops = Counter(n.op_type for n in nodes)
        own_box = group[-1].startswith("#")
        name = nodes[0].op_type if own_box else labels[group[0]] if len(group) == 1 else group[-1]
        scope = "/".join(g for g in group if g and not g.startswith("#")) or "top level"
        if len(nodes) > 1:
            lines = [name, f"{len(nodes)} nodes: {top_ops_text(ops)}"]
        else:
            lines = [name, f"in {scope}" if name == nodes[0].op_type else f"{nodes[0].op_type} in {scope}"]
        qdq = sum(ops[op] for op in QDQ_OPS)
        if qdq:
            lines.append(f"+ {qdq} Q/DQ" + (f", {ops['Constant']} Constant" if ops["Constant"] else ""))
        boxes[group] = _Box(lines, "quantized" if qdq else "part", f"{scope}: {len(nodes)} nodes")
    for v in model.graph.output:
        boxes[("out", v.name)] = _Box([v.name, shape_text(shapes[v.name].shape)], "io", "graph output")
    edges: dict[tuple, list[str]] = {}
    for src, dst, tensor in crossings(model, groups):
        label = edges.setdefault((src, dst), [])
        shape = shape_text(shapes[tensor].shape) if tensor in shapes else "?"
        if src[0] != "in" and dst[0] != "out" and shape not in label and len(label) < 3:
            label.append(shape)  # I/O boxes show their shapes themselves
    return _layout(boxes, edges)


def _draw_nodes(model: onnx.ModelProto, selected: list[int], shapes: dict[str, TensorInfo]) -> Svg:
    """One box per node (Constant nodes are drawn as Netron does with initializers: not at all), with the tensors
    that enter from outside ``nodes`` and the ones that leave them as grey boxes."""
    stored = stored_tensors(model)
    selected = [i for i in selected if model.graph.node[i].op_type != "Constant"]
    inside = set(selected)
    nodes = [model.graph.node[i] for i in selected]
    produced = {out: i for i, n in enumerate(nodes) for out in n.output}
    outputs = {v.name for v in model.graph.output}
    readers = tensor_readers(model)

    def tensor_box(t: str) -> _Box:
        return _Box([_name_tail(t), shape_text(shapes[t].shape) if t in shapes else "?"], "io", t)

    boxes: dict[object, _Box] = {}
    for n in nodes:
        for t in n.input:
            if t and t not in produced and t not in stored and ("in", t) not in boxes:
                boxes[("in", t)] = tensor_box(t)
    for i, n in enumerate(nodes):
        shape = shape_text(shapes[n.output[0]].shape) if n.output[0] in shapes else "?"
        leaf = (scope_of(n.name) or ("",))[-1]
        lines = [f"{n.op_type}{_attr_text(n, stored)}", f"{leaf} {shape}".strip()]
        boxes[i] = _Box(lines, "qdq" if n.op_type in QDQ_OPS else "part", n.name)
    edges: dict[tuple, list[str]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t in produced or ("in", t) in boxes:
                edges[(produced.get(t, ("in", t)), i)] = []
    for t, i in produced.items():
        if t in outputs or any(j not in inside for j in readers.get(t, ())):
            boxes[("out", t)] = tensor_box(t)
            edges[(i, ("out", t))] = []
    return _layout(boxes, edges)


def _attr_text(node: onnx.NodeProto, stored: dict[str, onnx.TensorProto]) -> str:
    """The attributes that say what a node does, compactly: ``3×3/2``, ``perm 0,2,3,1``, ``axis 1``, ``×64 axis 0``."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Conv", "MaxPool") and "kernel_shape" in attrs:
        text = " " + "×".join(map(str, attrs["kernel_shape"]))
        strides = attrs.get("strides", [1])
        return text + (f"/{strides[0]}" if max(strides) > 1 else "")
    if node.op_type == "Transpose":
        return " perm " + ",".join(map(str, attrs["perm"]))
    if node.op_type == "Softmax":
        return f" axis {attrs.get('axis', -1)}"
    if node.op_type in QDQ_OPS and len(node.input) > 1 and node.input[1] in stored:
        scales = numpy_helper.to_array(stored[node.input[1]]).reshape(-1)
        return f" ×{scales.size} axis {attrs.get('axis', 1)}" if scales.size > 1 else f" s={scales[0]:.3g}"
    return ""


def _layers(boxes: dict[object, _Box], edges: dict[tuple, list[str]]) -> list[int]:
    """Each box's layer, top = 0: the longest path from a source, then every box but the graph inputs moved down to
    just above its highest reader (side branches such as a weight's Q/DQ pair sit by their conv). ``boxes`` must be
    in topological order (ONNX node order is); an edge back to an earlier box (a cycle between modules) does not
    count."""
    keys = list(boxes)
    position = {k: i for i, k in enumerate(keys)}
    preds: dict[object, list] = {k: [] for k in keys}
    succs: dict[object, list] = {k: [] for k in keys}
    for src, dst in edges:
        if position[src] < position[dst]:
            preds[dst].append(src)
            succs[src].append(dst)
    layer: dict[object, int] = {}
    for k in keys:
        layer[k] = max((layer[p] + 1 for p in preds[k]), default=0)
    for k in reversed(keys):
        if succs[k] and not (boxes[k].style == "io" and not preds[k]):
            layer[k] = min(layer[s] for s in succs[k]) - 1
    return [layer[k] for k in keys]


def _layout(boxes: dict[object, _Box], edges: dict[tuple, list[str]]) -> Svg:
    """Place the boxes on ``_layers``' layers in igraph's order, one column as wide as the widest box, and write the
    SVG: edges as curves through igraph's dummy points, each edge label (a tensor's shape) once per source."""
    keys = list(boxes)
    index = {k: i for i, k in enumerate(keys)}
    layers = _layers(boxes, edges)
    graph = igraph.Graph(n=len(keys), edges=[(index[src], index[dst]) for src, dst in edges], directed=True)
    placed = graph.layout_sugiyama(layers=layers, maxiter=200)
    column = max(box.width for box in boxes.values()) + _GAP_X
    heights = [0.0] * (max(layers) + 1)
    for box, r in zip(boxes.values(), layers, strict=True):
        heights[r] = max(heights[r], box.height)
    gap_y = 46 if any(edges.values()) else 30
    tops = np.concatenate([[0], np.cumsum([h + gap_y for h in heights])]) + 10
    left = min(placed[i][0] * column - box.width / 2 for i, box in enumerate(boxes.values())) - 10
    right = max(placed[i][0] * column + box.width / 2 for i, box in enumerate(boxes.values())) + 10
    width, height = right - left, tops[-1] - gap_y + 10
    for i, (box, r) in enumerate(zip(boxes.values(), layers, strict=True)):
        box.x, box.y = placed[i][0] * column - left, tops[r] + (heights[r] - box.height) / 2

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
        f'font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    labelled: set[tuple] = set()  # (source, text): a tensor read by several boxes is labelled once
    for ((src, dst), label), route in zip(edges.items(), placed.edge_routing, strict=True):
        a, b = boxes[src], boxes[dst]
        pts = [(a.x, a.y + a.height)]
        pts += [(x * column - left, tops[round(y)] + heights[round(y)] / 2) for x, y in route]
        pts.append((b.x, b.y))
        path = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            mid = (y0 + y1) / 2
            path += f" C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}"
        out.append(f'<path d="{path}" fill="none" stroke="#555" stroke-width="1.2" marker-end="url(#arrow)"/>')
        for j, text in enumerate(t for t in label if (src, t) not in labelled):
            labelled.add((src, text))
            (x0, y0), (x1, _) = pts[0], pts[1]
            tx, ty = (x0 + x1) / 2 + 6, y0 + 14 + j * 12
            out.append(f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="10" fill="#444">{escape(text)}</text>')
    for box in boxes.values():
        fill, stroke = _FILL[box.style]
        x0, y0 = box.x - box.width / 2, box.y
        radius = 12 if box.style == "io" else 4
        out.append(f"<g><title>{escape(box.title)}</title>")
        out.append(
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" rx="{radius}" '
            f'fill="{fill}" stroke="{stroke}"/>'
        )
        for j, line in enumerate(box.lines):
            weight = ' font-weight="bold"' if j == 0 else ' fill="#333"'
            ty = y0 + _PAD / 2 + _LINE_H * (j + 0.75)
            out.append(f'<text x="{box.x:.1f}" y="{ty:.1f}" text-anchor="middle"{weight}>{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return Svg("\n".join(out))


def _name_tail(tensor: str) -> str:
    """The last three components of a tensor name: ``/backbone/layer1/layer1.2/relu_2/Relu_output_0`` →
    ``layer1.2/relu_2/Relu_output_0``."""
    components = tensor.split("/")
    return "/".join(components[-3:]) if len(components) > 3 else tensor
