"""Inspect the exported ONNX graphs: what goes in and out, which operators, where the Q/DQ pairs sit, which module
every node came from, a drawing, a diff, and the graph in Netron.

* ``summarize`` / ``op_counts`` / ``tensor_shapes``: inputs and outputs (names, dtypes, shapes), opset, node and
  parameter counts, the operator table, and the shape of every tensor (ONNX shape inference);
* ``qdq_pairs``: one row per DequantizeLinear — which tensor is quantized, weight or activation, scale(s), axis;
* ``module_tree`` / ``parts``: nodes grouped by the scope names the TorchScript exporter writes into node names
  (``/backbone/layer1/layer1.0/conv1/Conv``); for ``camera.backbone.onnx`` the parts read
  ResNet50 → GeneralizedLSSFPN → dtransform → depthnet → Slice/Softmax/Transpose;
* ``draw``: a static SVG (own layered layout, no graphviz), one box per part or one per node, Q/DQ in orange;
* ``diff``: fp16 against int8 — where the Q/DQ pairs went, and whatever else changed;
* tables for the notebook, one column per graph (``summary_table``, ``io_table``, ``op_table``), ``qdq_summary``,
  ``qdq_table``, ``tree_text``; ``describe``: all of it as text (``bevnb inspect FILE.onnx``);
* ``show_in_netron`` / ``stop_netron``: the file in Netron, inline in Jupyter; ``render_in_chromium`` drives a
  headless Chromium through that page and screenshots it.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import onnx
from onnx import numpy_helper

from .tables import Table

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
PART_LABELS = {"backbone": "ResNet50", "neck": "GeneralizedLSSFPN"}  # bevnb's class names for the scopes
NODE_LEVEL_MAX = 60  # draw(model) shows every node of a graph up to this size, else one box per part


# --- loading and summary -----------------------------------------------------------------------------------------


def load(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """An ONNX model from a path (a ``ModelProto`` passes through). ValueError with a one-line reason when the file
    is missing or is not an ONNX model."""
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected an .onnx file)")
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf raises DecodeError, but also others for some garbage
        raise ValueError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node or not model.opset_import:
        raise ValueError(f"{path} is not an ONNX model (no graph nodes or no opset)")
    return model


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, element type (numpy name) and shape (ints, or names for symbolic dims)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"{self.name} {self.dtype} {_shape(self.shape)}"


@dataclass(frozen=True)
class GraphSummary:
    """``parameters``: elements of the floating-point initializers (weights, biases, Q/DQ scales);
    ``parameter_bytes``: the storage of all initializers (and Constant nodes)."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    opset: int
    nodes: int
    parameters: int
    parameter_bytes: int


def summarize(model: onnx.ModelProto) -> GraphSummary:
    """I/O, opset, node and parameter counts of a graph."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    tensors = _stored_tensors(model)
    return GraphSummary(
        inputs=tuple(_tensor_info(v) for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor_info(v) for v in graph.output),
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
        nodes=len(graph.node),
        parameters=sum(_numel(t) for t in tensors.values() if _is_float(t.data_type)),
        parameter_bytes=sum(_numel(t) * _itemsize(t.data_type) for t in tensors.values()),
    )


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{op type: nodes}``, most frequent first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def tensor_shapes(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Every tensor of the graph by name — inputs, initializers, intermediates, outputs — with the dtype and shape
    that ONNX shape inference gives it (``[6, 512, 32, 88]`` for layer2's output in the backbone graph).

    Inference runs on a copy whose large initializers are declared inputs (type and shape, no data): the same
    result, 0.1 s instead of 3.4 s for the 108 MB backbone graph (small ones keep their values, which Reshape
    needs)."""
    graph = model.graph
    small = [t for t in graph.initializer if _numel(t) <= 1024]
    declared = [
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in graph.initializer
        if _numel(t) > 1024
    ]
    light = onnx.helper.make_model(
        onnx.helper.make_graph(list(graph.node), graph.name, [*graph.input, *declared], list(graph.output), small),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    inferred = onnx.shape_inference.infer_shapes(light).graph
    found = {t.name: TensorInfo(t.name, _dtype(t.data_type), tuple(t.dims)) for t in graph.initializer}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        found.setdefault(value.name, _tensor_info(value))
    return found


# --- Q/DQ --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedTensor:
    """One DequantizeLinear and what it dequantizes.

    * ``tensor``: the float tensor that is quantized (the QuantizeLinear input; the int8 initializer itself when
      the weight is stored quantized);
    * ``quantizer``: the scope of the QuantizeLinear, i.e. the pytorch-quantization module that wrote it
      (``backbone/layer1/layer1.0/conv1/_input_quantizer``);
    * ``kind``: ``"weight"`` (an initializer) or ``"activation"``; ``part``: its part (see ``parts``);
    * ``axis``: None per tensor, else the channel axis; ``scales``: one per tensor or one per channel;
    * ``consumers``: the op types that read the dequantized tensor.
    """

    tensor: str
    quantizer: str
    kind: str
    part: str
    axis: int | None
    scales: tuple[float, ...]
    zero_point: str
    consumers: tuple[str, ...]

    @property
    def scale_text(self) -> str:
        """``0.0286`` per tensor, ``64× 0.0013…0.00314`` (channels, smallest…largest) per channel."""
        if len(self.scales) == 1:
            return f"{self.scales[0]:.4g}"
        return f"{len(self.scales)}× {min(self.scales):.3g}…{max(self.scales):.3g}"


def qdq_pairs(model: onnx.ModelProto) -> list[QuantizedTensor]:
    """Every quantized tensor of the graph, in graph order (empty for a float graph)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(model)
    stored = _stored_tensors(model)
    paths = _tree_paths(model)
    labels = _part_labels(model, paths)
    rows = []
    for node, path in zip(graph.node, paths, strict=True):
        if node.op_type != "DequantizeLinear":
            continue
        source = producer.get(node.input[0])
        q = source if source is not None and source.op_type == "QuantizeLinear" else None
        tensor = q.input[0] if q is not None else node.input[0]
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        scales = numpy_helper.to_array(stored[node.input[1]]).reshape(-1) if node.input[1] in stored else ()
        zero = stored.get(node.input[2]) if len(node.input) > 2 else None
        rows.append(
            QuantizedTensor(
                tensor=tensor,
                quantizer="/".join(_scope((q or node).name)),
                kind="weight" if tensor in stored else "activation",
                part=labels[path[0]],
                axis=axis if len(scales) > 1 else None,
                scales=tuple(float(s) for s in scales),
                zero_point=_dtype(zero.data_type) if zero is not None else "uint8",
                consumers=tuple(dict.fromkeys(graph.node[j].op_type for j in consumers.get(node.output[0], ()))),
            )
        )
    return rows


# --- modules -----------------------------------------------------------------------------------------------------


@dataclass
class Module:
    """One scope of the exporter's node names and the nodes under it (its own and its children's).

    ``name``: the part label for a top-level part (``ResNet50``), else the scope component (``layer1.0``);
    ``scope``: the scope path (``backbone/layer1/layer1.0``; ``""`` for the top-level ops); ``ops``: op type →
    nodes, children included.
    """

    name: str
    scope: str
    ops: Counter = field(default_factory=Counter)
    children: dict[str, Module] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())

    @property
    def qdq(self) -> int:
        return sum(self.ops[op] for op in QDQ_OPS)


def module_tree(model: onnx.ModelProto) -> Module:
    """The graph's nodes as a tree of exporter scopes. The root's children are the parts (see ``parts``)."""
    paths = _tree_paths(model)
    labels = _part_labels(model, paths)
    root = Module(name=model.graph.name or "graph", scope="")
    nodes = list(model.graph.node)
    # Constant nodes (Q/DQ scales) come first in an onnxsim'ed graph; they should not decide the children's order
    for i in sorted(range(len(nodes)), key=lambda i: nodes[i].op_type == "Constant"):
        node, path = nodes[i], paths[i]
        root.ops[node.op_type] += 1
        module = root.children.setdefault(path[0], Module(labels[path[0]], path[0]))
        module.ops[node.op_type] += 1
        for depth in range(2, len(path) + 1):
            name = path[depth - 1]
            module = module.children.setdefault(name, Module(name, "/".join(path[:depth])))
            module.ops[node.op_type] += 1
    return root


def parts(model: onnx.ModelProto) -> list[Module]:
    """The top-level modules, in graph order, whose node counts add up to the graph's.

    A node belongs to the first component of its scope (``backbone``, ``neck``, ``dtransform``, ``depthnet``; a
    ``vtransform`` wrapper is looked through). Nodes without a scope are the ops that ``SubclassCameraModule.forward``
    writes itself: one whose outputs all feed a single part joins it (the reshapes of ``img`` and ``depth``, the
    concat before depthnet); the rest form one part named after their ops (``Slice/Softmax/Transpose``).
    """
    return list(module_tree(model).children.values())


def chain(model: onnx.ModelProto) -> str:
    """The parts as one line: ``ResNet50 (120 nodes) → GeneralizedLSSFPN (12) → …``."""
    return " → ".join(f"{p.name} ({p.nodes}{' nodes' if i == 0 else ''})" for i, p in enumerate(parts(model)))


def _scope(name: str) -> tuple[str, ...]:
    """``/backbone/layer1/layer1.0/conv1/Conv`` → ``("backbone", "layer1", "layer1.0", "conv1")``.

    SubclassCameraModule calls ``vtransform.depth_and_features``, a method, so its layers read ``/dtransform/…``; a
    module that calls ``vtransform`` itself would write ``/vtransform/dtransform/…``: both give the same scope.
    """
    scope = tuple(part for part in name.split("/")[:-1] if part)
    return scope[1:] if scope[:1] == ("vtransform",) else scope


def _tree_paths(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """Per node, its place in the module tree: its scope, where an unscoped node takes the part its outputs all
    feed (``("backbone",)``) or, failing that, the top-level part ``("",)``."""
    graph = model.graph
    paths: list[tuple[str, ...]] = [_scope(node.name) for node in graph.node]
    consumers = _consumers(model)
    outputs = {v.name for v in graph.output}
    for i in reversed(range(len(paths))):  # consumers come later in a topologically sorted graph
        if paths[i] or any(out in outputs for out in graph.node[i].output):
            continue
        fed = {paths[j][:1] for out in graph.node[i].output for j in consumers.get(out, ())}
        if len(fed) == 1 and () not in fed:
            paths[i] = fed.pop()
    return [path or ("",) for path in paths]


def _part_labels(model: onnx.ModelProto, paths: list[tuple[str, ...]]) -> dict[str, str]:
    """Part key → label: ``PART_LABELS`` for known scopes, the top-level part's op types joined for ``""``."""
    labels = {path[0]: PART_LABELS.get(path[0], path[0]) for path in paths}
    rest = [
        n.op_type for n, path in zip(model.graph.node, paths, strict=True) if path == ("",) and n.op_type != "Constant"
    ]
    labels[""] = "/".join(dict.fromkeys(rest)) or "top level"
    return labels


# --- diff --------------------------------------------------------------------------------------------------------


@dataclass
class GraphDiff:
    """What turns graph ``a`` into graph ``b``.

    * ``ops``: op type → (count in a, count in b), changed ones only;
    * ``qdq``: (part, what reads the dequantized tensor: ``"weight → Conv"``, ``"activation → Conv+Add"``) → Q/DQ
      pairs in b minus pairs in a;
    * ``added`` / ``removed``: nodes other than Q/DQ (and the Constant nodes that feed only Q/DQ) found in one graph
      only; ``rewired``: nodes of both whose op type, attributes or activation inputs differ once the Q/DQ pairs in
      front of them are looked through. All three empty: b is a plus Q/DQ, nothing else.
    """

    io: list[str]
    ops: dict[str, tuple[int, int]]
    qdq: dict[tuple[str, str], int]
    added: list[str]
    removed: list[str]
    rewired: list[str]
    parameters: tuple[int, int]

    def __str__(self) -> str:
        lines = ["inputs/outputs: " + ("; ".join(self.io) if self.io else "same names, dtypes and shapes")]
        if self.ops:
            lines.append("operators (a → b):")
            lines += [f"  {op:24s} {a:5d} → {b:5d}  ({b - a:+d})" for op, (a, b) in self.ops.items()]
        else:
            lines.append("operators: same counts")
        if self.qdq:
            lines.append("Q/DQ pairs added, by part and by what reads the dequantized tensor:")
            lines += [f"  {part:24s} {where:28s} {n:+5d}" for (part, where), n in self.qdq.items()]
        a, b = self.parameters
        lines.append(f"parameters: {a:,} → {b:,} ({b - a:+,})")
        for title, names in (("only in b", self.added), ("only in a", self.removed), ("rewired", self.rewired)):
            shown = ", ".join(names[:8]) + (f" … ({len(names)} in all)" if len(names) > 8 else "")
            lines.append(f"other nodes {title}: {shown or 'none'}")
        return "\n".join(lines)


def diff(a: onnx.ModelProto, b: onnx.ModelProto) -> GraphDiff:
    """Compare two exports of the same module (fp16 ``a`` against int8 ``b``), matching nodes by name."""
    sa, sb = summarize(a), summarize(b)
    io = [
        f"{side} {x} ≠ {y}"
        for side, xs, ys in (("input", sa.inputs, sb.inputs), ("output", sa.outputs, sb.outputs))
        for x, y in zip(xs, ys, strict=False)
        if x != y
    ]
    if len(sa.inputs) != len(sb.inputs) or len(sa.outputs) != len(sb.outputs):
        io.append(f"{len(sa.inputs)}→{len(sb.inputs)} inputs, {len(sa.outputs)}→{len(sb.outputs)} outputs")
    ca, cb = op_counts(a), op_counts(b)
    ops = {op: (ca.get(op, 0), cb.get(op, 0)) for op in dict.fromkeys([*cb, *ca]) if ca.get(op) != cb.get(op)}
    qdq: Counter = Counter()
    for sign, rows in ((-1, qdq_pairs(a)), (1, qdq_pairs(b))):
        for row in rows:
            qdq[(row.part, f"{row.kind} → {'+'.join(row.consumers)}")] += sign
    part_order = list(dict.fromkeys(part for part, _ in qdq))  # graph order: b's rows come in node order
    na, nb = _plain_nodes(a), _plain_nodes(b)
    order = [node.name for node in b.graph.node]
    return GraphDiff(
        io=io,
        ops=ops,
        qdq={k: qdq[k] for k in sorted(qdq, key=lambda k: (part_order.index(k[0]), k[1])) if qdq[k]},
        added=[name for name in order if name in nb and name not in na],
        removed=[node.name for node in a.graph.node if node.name in na and node.name not in nb],
        rewired=[name for name in order if name in na and name in nb and na[name] != nb[name]],
        parameters=(sa.parameters, sb.parameters),
    )


def _plain_nodes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Nodes other than Q/DQ and their Constant feeders, by name → (op type, attributes, activation inputs with the
    Q/DQ pairs looked through)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    stored = _stored_tensors(model)
    consumers = _consumers(model)

    def source(tensor: str) -> str:
        node = producer.get(tensor)
        while node is not None and node.op_type in QDQ_OPS:
            tensor = node.input[0]
            node = producer.get(tensor)
        return tensor

    plain = {}
    for node in graph.node:
        feeds_qdq_only = node.op_type == "Constant" and all(
            graph.node[j].op_type in QDQ_OPS for out in node.output for j in consumers.get(out, ())
        )
        if node.op_type in QDQ_OPS or feeds_qdq_only:
            continue
        attrs = tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute))
        inputs = tuple(source(t) for t in node.input if source(t) not in stored)
        plain[node.name] = (node.op_type, attrs, inputs)
    return plain


# --- text --------------------------------------------------------------------------------------------------------


def describe(source: str | Path | onnx.ModelProto) -> str:
    """Everything ``bevnb inspect FILE.onnx`` prints: I/O, opset, node and parameter counts, the operator table,
    the Q/DQ summary and the module tree (two levels). ValueError on a missing or non-ONNX file."""
    model = load(source)
    name = (model.graph.name or "graph") if isinstance(source, onnx.ModelProto) else Path(source).name
    graphs = {name: model}
    sections = [summary_table(graphs), io_table(graphs), op_table(graphs)]
    sections.append(qdq_summary(model) if qdq_pairs(model) else "Q/DQ: none (a float graph)")
    sections.append(f"modules: {chain(model)}\n{tree_text(model)}")
    return "\n\n".join(map(str, sections))


def summary_table(models: Mapping[str, onnx.ModelProto]) -> Table:
    """Opset, nodes, parameters and their size, one column per graph (``{"fp16": model, "int8": model}``)."""
    found = {label: summarize(model) for label, model in models.items()}
    rows = [
        ("opset", *(s.opset for s in found.values())),
        ("nodes", *(s.nodes for s in found.values())),
        ("parameters", *(s.parameters for s in found.values())),
        ("stored tensors (MB)", *(round(s.parameter_bytes / 1e6, 1) for s in found.values())),
    ]
    return Table(rows, ["", *found], "graph")


def io_table(models: Mapping[str, onnx.ModelProto]) -> Table:
    """Every graph input and output: name, dtype, shape."""
    rows = []
    for label, model in models.items():
        s = summarize(model)
        rows += [(label, "input", t.name, t.dtype, t.shape) for t in s.inputs]
        rows += [(label, "output", t.name, t.dtype, t.shape) for t in s.outputs]
    return Table(rows, ["graph", "", "tensor", "dtype", "shape"], "inputs and outputs")


def op_table(models: Mapping[str, onnx.ModelProto]) -> Table:
    """Nodes per op type, one column per graph, ops in order of their count in the first graph."""
    counts = {label: op_counts(model) for label, model in models.items()}
    ops = dict.fromkeys(op for found in counts.values() for op in found)
    rows = [(op, *(found.get(op, 0) for found in counts.values())) for op in ops]
    return Table(rows, ["op", *counts], "operators (nodes per op type)")


def qdq_summary(model: onnx.ModelProto) -> Table:
    """Quantized tensors per part: weights (per channel) and activations (per tensor)."""
    found: dict[str, Counter] = {}
    for row in qdq_pairs(model):
        found.setdefault(row.part, Counter())[row.kind] += 1
    rows = [(part, c["weight"], c["activation"]) for part, c in found.items()]
    rows.append(("all", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return Table(rows, ["part", "weights", "activations"], "Q/DQ pairs: quantized tensors per part")


def qdq_table(model: onnx.ModelProto, limit: int | None = None) -> Table:
    """The first ``limit`` (all by default) Q/DQ pairs: quantizer, part, kind, axis, scale(s), what reads them."""
    rows = [
        (r.quantizer, r.part, r.kind, "-" if r.axis is None else r.axis, r.scale_text, "+".join(r.consumers))
        for r in qdq_pairs(model)[:limit]
    ]
    return Table(rows, ["quantizer", "part", "kind", "axis", "scale", "read by"], "Q/DQ pairs")


def tree_text(model: onnx.ModelProto, depth: int = 2) -> str:
    """The module tree, indented ``depth`` levels: name, nodes, top ops, Q/DQ and Constant nodes. A module's own
    nodes (those in no child) get their own line, so every level adds up."""
    lines = []

    def line(indent: int, name: str, ops: Counter) -> None:
        qdq = sum(ops[op] for op in QDQ_OPS)
        extra = (f", Q/DQ {qdq}" if qdq else "") + (f", Constant {ops['Constant']}" if ops["Constant"] else "")
        lines.append(f"{'  ' * indent}{name:{44 - 2 * indent}s} {sum(ops.values()):5d} nodes  {_top_ops(ops)}{extra}")

    def walk(module: Module, level: int) -> None:
        scope = f" ({module.scope})" if level == 1 and module.scope not in ("", module.name) else ""
        line(level, module.name + scope, module.ops)
        if level < depth and module.children:
            own = module.ops - sum((child.ops for child in module.children.values()), Counter())
            if own:
                line(level + 1, "(own nodes)", own)
            for child in module.children.values():
                walk(child, level + 1)

    for part in module_tree(model).children.values():
        walk(part, 1)
    return "\n".join(lines)


# --- drawing -----------------------------------------------------------------------------------------------------


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
    * ``depth``: one box per module ``depth`` scope levels deep (1: the parts, see ``parts``), edges labelled with
      the shapes of the tensors they carry;
    * neither: every node for a graph of at most ``NODE_LEVEL_MAX`` nodes, else the parts.
    """
    shapes = tensor_shapes(model)
    paths = _tree_paths(model)
    if module is not None:
        scope = _scope(module + "/")
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
    rank: int = 0
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
    labels = _part_labels(model, paths)
    groups = [path[:depth] if len(path) >= depth else (*path, f"#{i}") for i, path in enumerate(paths)]
    members: dict[tuple[str, ...], list[onnx.NodeProto]] = {}
    for node, group in zip(model.graph.node, groups, strict=True):
        members.setdefault(group, []).append(node)
    boxes: dict[object, _Box] = {}
    for v in _graph_inputs(model):
        boxes[("in", v.name)] = _Box([v.name, _shape(shapes[v.name].shape)], "io", "graph input")
    for group, nodes in members.items():
        ops = Counter(n.op_type for n in nodes)
        own_box = group[-1].startswith("#")
        name = nodes[0].op_type if own_box else labels[group[0]] if len(group) == 1 else group[-1]
        scope = "/".join(g for g in group if g and not g.startswith("#")) or "top level"
        if len(nodes) > 1:
            lines = [name, f"{len(nodes)} nodes: {_top_ops(ops)}"]
        else:
            lines = [name, f"in {scope}" if name == nodes[0].op_type else f"{nodes[0].op_type} in {scope}"]
        qdq = sum(ops[op] for op in QDQ_OPS)
        if qdq:
            lines.append(f"+ {qdq} Q/DQ" + (f", {ops['Constant']} Constant" if ops["Constant"] else ""))
        boxes[group] = _Box(lines, "quantized" if qdq else "part", f"{scope}: {len(nodes)} nodes")
    for v in model.graph.output:
        boxes[("out", v.name)] = _Box([v.name, _shape(shapes[v.name].shape)], "io", "graph output")
    edges: dict[tuple, list[str]] = {}
    for src, dst, tensor in _crossings(model, groups):
        label = edges.setdefault((src, dst), [])
        shape = _shape(shapes[tensor].shape) if tensor in shapes else "?"
        if src[0] != "in" and dst[0] != "out" and shape not in label and len(label) < 3:
            label.append(shape)  # I/O boxes show their shapes themselves
    return _layout(boxes, edges)


def _crossings(model: onnx.ModelProto, groups: list[tuple[str, ...]]) -> list[tuple[tuple, tuple, str]]:
    """``(source, destination, tensor)`` for every tensor that leaves its node's group (``groups[i]`` is node i's):
    graph inputs come from ``("in", name)``, graph outputs go to ``("out", name)``; weights and scales (initializers,
    Constant nodes) are not edges."""
    stored = _stored_tensors(model)
    source = {v.name: ("in", v.name) for v in _graph_inputs(model)}
    for node, group in zip(model.graph.node, groups, strict=True):
        source.update((out, group) for out in node.output)
    found = []
    for node, group in zip(model.graph.node, groups, strict=True):
        for tensor in node.input:
            if tensor in source and tensor not in stored and source[tensor] != group:
                found.append((source[tensor], group, tensor))
    found += [(source[v.name], ("out", v.name), v.name) for v in model.graph.output]
    return found


def boundary_table(model: onnx.ModelProto) -> Table:
    """The tensors that cross from one part to another, with their shapes: the borders in upstream's screenshots."""
    paths = _tree_paths(model)
    labels = _part_labels(model, paths)
    shapes = tensor_shapes(model)
    rows = {}
    for src, dst, tensor in _crossings(model, [path[:1] for path in paths]):
        ends = [{"in": "input", "out": "output"}.get(end[0], labels.get(end[0])) for end in (src, dst)]
        rows[tensor] = (*ends, tensor, shapes[tensor].shape)
    return Table(rows.values(), ["from", "to", "tensor", "shape"], "tensors between the parts")


def _draw_nodes(model: onnx.ModelProto, selected: list[int], shapes: dict[str, TensorInfo]) -> Svg:
    """One box per node (Constant nodes are drawn as Netron does with initializers: not at all), with the tensors
    that enter from outside ``nodes`` and the ones that leave them as grey boxes."""
    stored = _stored_tensors(model)
    selected = [i for i in selected if model.graph.node[i].op_type != "Constant"]
    inside = set(selected)
    nodes = [model.graph.node[i] for i in selected]
    produced = {out: i for i, n in enumerate(nodes) for out in n.output}
    outputs = {v.name for v in model.graph.output}
    consumers = _consumers(model)

    def tensor_box(t: str) -> _Box:
        return _Box([_short(t), _shape(shapes[t].shape) if t in shapes else "?"], "io", t)

    boxes: dict[object, _Box] = {}
    for n in nodes:
        for t in n.input:
            if t and t not in produced and t not in stored and ("in", t) not in boxes:
                boxes[("in", t)] = tensor_box(t)
    for i, n in enumerate(nodes):
        shape = _shape(shapes[n.output[0]].shape) if n.output[0] in shapes else "?"
        leaf = (_scope(n.name) or ("",))[-1]
        lines = [f"{n.op_type}{_attr_text(n, stored)}", f"{leaf} {shape}".strip()]
        boxes[i] = _Box(lines, "qdq" if n.op_type in QDQ_OPS else "part", n.name)
    edges: dict[tuple, list[str]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t in produced or ("in", t) in boxes:
                edges[(produced.get(t, ("in", t)), i)] = []
    for t, i in produced.items():
        if t in outputs or any(j not in inside for j in consumers.get(t, ())):
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


def _layout(boxes: dict[object, _Box], edges: dict[tuple, list[str]]) -> Svg:
    """A layered (Sugiyama-style) layout, top to bottom: rank = longest path from a source, then every box but the
    graph inputs moved down next to its successors (side branches such as weight Q/DQ sit by their conv); long edges
    get virtual points; barycentre sweeps order each rank and pull x towards the neighbours' mean. ``boxes`` must be
    in topological order (ONNX node order is)."""
    keys = list(boxes)
    preds: dict[object, list] = {k: [] for k in keys}
    for src, dst in edges:
        preds[dst].append(src)
    position = {k: i for i, k in enumerate(keys)}
    succs: dict[object, list] = {k: [] for k in keys}
    for src, dst in edges:
        if position[src] < position[dst]:  # an edge back to an earlier box (a cycle between groups) does not rank
            succs[src].append(dst)
    for k in keys:  # longest path from a source …
        boxes[k].rank = max((boxes[p].rank + 1 for p in preds[k] if position[p] < position[k]), default=0)
    for k in reversed(keys):  # … then every box but the graph inputs as low as its successors allow
        if succs[k] and not (boxes[k].style == "io" and not preds[k]):
            boxes[k].rank = min(boxes[s].rank for s in succs[k]) - 1
    # virtual points on long edges, so they route between boxes instead of through them
    points: dict[object, tuple[int, float]] = {k: (boxes[k].rank, boxes[k].width) for k in keys}
    adjacent: list[tuple[object, object]] = []
    routes: dict[tuple, list] = {}
    for (src, dst), _ in edges.items():
        chain_ = [src]
        for r in range(boxes[src].rank + 1, boxes[dst].rank):
            virtual = ("virtual", src, dst, r)
            points[virtual] = (r, 12.0)
            chain_.append(virtual)
        chain_.append(dst)
        adjacent += list(itertools.pairwise(chain_))
        routes[(src, dst)] = chain_
    ranks: list[list] = [[] for _ in range(max(r for r, _ in points.values()) + 1)]
    for k, (r, _) in points.items():
        ranks[r].append(k)
    up = {k: [] for k in points}
    down = {k: [] for k in points}
    for a, b in adjacent:
        if points[a][0] < points[b][0]:
            down[a].append(b)
            up[b].append(a)
    x: dict[object, float] = {}
    for layer in ranks:
        _pack(layer, {k: 0.0 for k in layer}, points, x)
    for sweep in range(8):
        order = ranks[1:] if sweep % 2 == 0 else ranks[-2::-1]
        neighbours = up if sweep % 2 == 0 else down
        for layer in order:
            want = {k: np.mean([x[n] for n in neighbours[k]]) if neighbours[k] else x[k] for k in layer}
            layer.sort(key=lambda k: want[k])
            _pack(layer, want, points, x)
    heights = [max((boxes[k].height for k in layer if k in boxes), default=0) for layer in ranks]
    gap_y = 46 if any(edges.values()) else 30
    ys = np.concatenate([[0], np.cumsum([h + gap_y for h in heights])])
    left = min(x[k] - points[k][1] / 2 for k in points) - 10
    right = max(x[k] + points[k][1] / 2 for k in points) + 10
    width, height = right - left, ys[-1] - gap_y + 20
    for k, box in boxes.items():
        box.x, box.y = x[k] - left, ys[box.rank] + 10 + (heights[box.rank] - box.height) / 2

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
        f'font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    labelled: set[tuple] = set()  # (source, text): a tensor read by several boxes is labelled once
    for (src, dst), label in edges.items():
        route = routes[(src, dst)]
        pts = [(boxes[src].x, boxes[src].y + boxes[src].height)]
        pts += [(x[v] - left, ys[v[3]] + 10 + heights[v[3]] / 2) for v in route[1:-1]]
        pts.append((boxes[dst].x, boxes[dst].y))
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


def _pack(layer: list, want: dict, points: dict, x: dict) -> None:
    """Place ``layer`` (in its order) as close to ``want`` as the boxes' widths allow: the mean of a left-to-right
    and a right-to-left push, which both keep every gap."""
    sep = [(points[a][1] + points[b][1]) / 2 + _GAP_X for a, b in itertools.pairwise(layer)]
    left = [want[layer[0]]] if layer else []
    for k, s in zip(layer[1:], sep, strict=True):
        left.append(max(want[k], left[-1] + s))
    right = [want[layer[-1]]] if layer else []
    for k, s in zip(reversed(layer[:-1]), reversed(sep), strict=True):
        right.append(min(want[k], right[-1] - s))
    for k, a, b in zip(layer, left, reversed(right), strict=True):
        x[k] = (a + b) / 2


# --- Netron ------------------------------------------------------------------------------------------------------

_servers: dict[Path, tuple[str, int]] = {}


def show_in_netron(path: str | Path, height: int = 600):
    """Serve ``path`` with Netron on 127.0.0.1 (a free port) and return an inline ``IFrame`` in Jupyter, the URL
    elsewhere. Re-running with the same file reuses its server; ``stop_netron()`` stops them all.

    * The first time, Netron shows a consent dialog ("This app uses cookies …"): click Accept once (a cookie keeps
      it for 30 days). Netron works offline; only that dialog blocks the page.
    * Remote Jupyter (JupyterHub, VS Code Remote, Docker): the IFrame is loaded by *your* browser, so the address
      must be reachable from it. Set ``BEVNB_NETRON_HOST`` (bind address, e.g. ``0.0.0.0`` in Docker) and
      ``BEVNB_NETRON_PORT`` (a port you forward or publish, e.g. ``ssh -L 8081:localhost:8081``), and, behind a
      proxy, ``BEVNB_NETRON_URL`` with ``{port}`` in it (jupyter-server-proxy:
      ``https://hub.example.org/user/me/proxy/{port}/``). With a fixed port one file is served at a time.
    """
    url = _serve(path)
    if _in_jupyter():
        from IPython.display import IFrame

        return IFrame(url, width="100%", height=height)
    return url


def _serve(path: str | Path) -> str:
    """Start (or reuse) the Netron server for ``path``; return the URL a browser should open."""
    import netron

    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected an ONNX file to open in Netron)")
    host = os.environ.get("BEVNB_NETRON_HOST", "127.0.0.1")
    port = int(os.environ.get("BEVNB_NETRON_PORT", "0"))
    address = _servers.get(path)
    if address is None or not netron.status(address) or address[0] != host or port not in (0, address[1]):
        if address is not None:
            netron.stop(address)
        root = logging.getLogger()
        quiet = logging.NullHandler()
        root.addHandler(quiet)  # netron.serve calls logging.basicConfig(INFO) on an unconfigured root logger
        try:
            address = tuple(netron.serve(str(path), None, (host, port), browse=False))
        finally:
            root.removeHandler(quiet)
        for other, served in list(_servers.items()):
            if served == address:  # a fixed port: netron.serve has just replaced that server
                del _servers[other]
        _servers[path] = address
    return os.environ.get("BEVNB_NETRON_URL", "http://{host}:{port}").format(host=address[0], port=address[1])


def stop_netron() -> None:
    """Stop every Netron server that ``show_in_netron`` started."""
    import netron

    for address in _servers.values():
        netron.stop(address)
    _servers.clear()


@dataclass(frozen=True)
class NetronRender:
    """What headless Chromium showed: ``seconds`` from opening the page to the graph drawn, the page's HTML,
    the number of drawn nodes and the screenshot's path."""

    seconds: float
    html: str = field(repr=False)  # the whole page: too long to print
    nodes: int = 0
    screenshot: Path = Path()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


def render_in_chromium(
    path: str | Path,
    screenshot: str | Path,
    focus: str | None = None,
    timeout_s: float = 120.0,
    size: tuple[int, int] = (1400, 1000),
) -> NetronRender:
    """Open ``path`` in Netron in headless Chromium (Playwright driving ``CHROMIUM``), accept the consent dialog,
    wait until the last graph output is drawn, and save a PNG screenshot; ``focus`` (a node or tensor name shown on
    the page) scrolls the view to it first. ``seconds``: from opening the URL to the graph drawn (consent included).

    Netron replaces ``window.eval``, so everything here goes through locators and ``page.content()``, never
    ``page.evaluate``.
    """
    import tempfile

    from playwright.sync_api import sync_playwright

    model = load(path)
    last_output = model.graph.output[-1].name
    url = _serve(path)
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bevnb-chromium-") as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS), headless=True,
            viewport={"width": size[0], "height": size[1]},
        )  # fmt: skip
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            start = time.perf_counter()
            page.goto(url)
            accept = page.get_by_role("button", name="Accept")
            expired = page.get_by_text("Please update to the newest version")
            drawn = page.locator("body.default text").filter(has_text=last_output)
            while not drawn.count():
                if accept.count() and accept.first.is_visible():
                    accept.first.click()
                if expired.count() and expired.first.is_visible():
                    raise RuntimeError("Netron refuses to render: this netron build is over 180 days old; upgrade it")
                if time.perf_counter() - start > timeout_s:
                    raise TimeoutError(f"Netron did not draw {last_output!r} within {timeout_s:.0f} s")
                page.wait_for_timeout(50)
            seconds = time.perf_counter() - start
            if focus is not None:
                page.locator("text").filter(has_text=focus).first.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot))
            html = page.content()
            nodes = page.locator("g.node").count()
        finally:
            browser.close()
    return NetronRender(seconds, html, nodes, screenshot)


def _in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


# --- small helpers -----------------------------------------------------------------------------------------------


def _top_ops(ops: Counter, n: int = 3) -> str:
    """``Conv 53 · Relu 49 · Add 16``: the most frequent ops other than Q/DQ and Constant."""
    return " · ".join([f"{op} {k}" for op, k in ops.most_common() if op not in (*QDQ_OPS, "Constant")][:n])


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _consumers(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name → indices of the nodes that read it."""
    found: dict[str, list[int]] = {}
    for i, node in enumerate(model.graph.node):
        for tensor in node.input:
            found.setdefault(tensor, []).append(i)
    return found


def _stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors by name (not converted: the big ones are never copied)."""
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = value
    return found


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    t = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
    return TensorInfo(value.name, _dtype(t.elem_type), dims)


def _dtype(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name if elem_type else "?"


def _is_float(elem_type: int) -> bool:
    return elem_type != 0 and np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type), np.floating)


def _itemsize(elem_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _short(tensor: str) -> str:
    """``/backbone/layer1/layer1.2/relu_2/Relu_output_0`` → ``layer1.2/relu_2/Relu_output_0``."""
    parts_ = tensor.split("/")
    return "/".join(parts_[-3:]) if len(parts_) > 3 else tensor
