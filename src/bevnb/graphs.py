"""Read and describe the exported ONNX graphs: what goes in and out, which operators, which tensors are quantized,
which module every node came from, and what differs between two exports. Pictures are ``bevnb.drawing``'s, the
graph in Netron is ``bevnb.netron_view``'s.

* ``summarize`` / ``op_counts`` / ``tensor_shapes``: inputs and outputs (names, dtypes, shapes), opset, node and
  parameter counts, the operator table, and the shape of every tensor (ONNX shape inference);
* ``quantized_tensors``: the distinct quantized tensors — which tensor, weight or activation, scale(s), axis — one
  per tensor however many Q/DQ pairs carry it; ``count_quantized`` counts them by kind;
* ``module_tree`` / ``parts``: nodes grouped by the scope names the TorchScript exporter writes into node names
  (``/backbone/layer1/layer1.0/conv1/Conv``); for ``camera.backbone.onnx`` the parts read
  ResNet50 → GeneralizedLSSFPN → dtransform → depthnet → Slice/Softmax/Transpose;
* ``crossings``: the tensors that pass from one group of nodes to another (the edges of a module-level drawing);
* ``diff``: fp16 against int8 — where the quantized tensors went, and whatever else changed;
* tables for the notebook, one column per graph (``summary_table``, ``io_table``, ``op_table``),
  ``boundary_table``, ``qdq_summary``, ``qdq_table``, ``tree_text``; ``describe``: all of it as text
  (``bevnb inspect FILE.onnx``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .tables import Table

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
PART_LABELS = {"backbone": "ResNet50", "neck": "GeneralizedLSSFPN"}  # bevnb's class names for the scopes


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
        return f"{self.name} {self.dtype} {shape_text(self.shape)}"


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
    tensors = stored_tensors(model)
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
    result without copying the weights through shape inference (small ones keep their values, which Reshape
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
    """A tensor that the graph quantizes, and how.

    * ``tensor``: the float tensor that is quantized (the QuantizeLinear input; the int8 initializer itself when
      the weight is stored quantized);
    * ``kind``: ``"weight"`` (an initializer) or ``"activation"``;
    * ``axis``: None per tensor, else the channel axis; ``scales``: one per tensor or one per channel;
      ``zero_point``: its element type (``int8``);
    * ``quantizer``: the scope of the (first) QuantizeLinear, i.e. the pytorch-quantization module that wrote it
      (``backbone/layer1/layer1.0/conv1/_input_quantizer``); ``part``: its part (see ``parts``);
    * ``consumers``: the op types that read the dequantized tensor; ``pairs``: the Q/DQ pairs that carry it;
    * ``source``: the node that computes the tensor (else the tensor): simplifiers may rename tensors, not nodes.

    Two are equal when they quantize the same tensor the same way (tensor, kind, axis, scales, zero point), whatever
    the names of the nodes that do it.
    """

    tensor: str
    kind: str
    axis: int | None
    scales: tuple[float, ...]
    zero_point: str
    quantizer: str = field(compare=False)
    part: str = field(compare=False)
    consumers: tuple[str, ...] = field(compare=False)
    pairs: int = field(default=1, compare=False)
    source: str = field(default="", compare=False)

    @property
    def scale_text(self) -> str:
        """``0.0286`` per tensor, ``64× 0.0013…0.00314`` (channels, smallest…largest) per channel."""
        if len(self.scales) == 1:
            return f"{self.scales[0]:.4g}"
        return f"{len(self.scales)}× {min(self.scales):.3g}…{max(self.scales):.3g}"


def quantized_tensors(model: onnx.ModelProto) -> list[QuantizedTensor]:
    """The distinct quantized tensors of the graph, in graph order (empty for a float graph).

    One per DequantizeLinear, except that the DequantizeLinears of one tensor with the same scales, zero point type
    and axis are one quantized tensor: the TorchScript exporter writes one Q/DQ pair per quantizer *call*, so a
    shared quantizer that reads a tensor twice writes two identical pairs (onnxsim merges them into one). A tensor
    behind a ``Cast`` is the Cast's input (ModelOpt's exporter writes no-op Casts, one per quantizer call)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers = tensor_readers(model)
    stored = stored_tensors(model)
    paths = node_paths(model)
    labels = part_labels(model, paths)
    found: dict[QuantizedTensor, QuantizedTensor] = {}
    for node, path in zip(graph.node, paths, strict=True):
        if node.op_type != "DequantizeLinear":
            continue
        source = producer.get(node.input[0])
        q = source if source is not None and source.op_type == "QuantizeLinear" else None
        tensor = q.input[0] if q is not None else node.input[0]
        while tensor in producer and producer[tensor].op_type == "Cast":
            tensor = producer[tensor].input[0]
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        scales = numpy_helper.to_array(stored[node.input[1]]).reshape(-1) if node.input[1] in stored else ()
        zero = stored.get(node.input[2]) if len(node.input) > 2 else None
        row = QuantizedTensor(
            tensor=tensor,
            kind="weight" if tensor in stored else "activation",
            axis=axis if len(scales) > 1 else None,
            scales=tuple(float(s) for s in scales),
            zero_point=_dtype(zero.data_type) if zero is not None else "uint8",
            quantizer="/".join(scope_of((q or node).name)),
            part=labels[path[0]],
            consumers=tuple(dict.fromkeys(graph.node[j].op_type for j in readers.get(node.output[0], ()))),
            source=producer[tensor].name if tensor in producer else tensor,
        )
        first = found.get(row)
        found[row] = (
            row
            if first is None
            else replace(first, consumers=tuple(dict.fromkeys(first.consumers + row.consumers)), pairs=first.pairs + 1)
        )
    return list(found.values())


def quantization_signature(model: onnx.ModelProto) -> set[tuple]:
    """What a simplifier must keep, whatever it renames: ``(source, kind, axis, scales, zero point)`` per tensor."""
    return {(t.source, t.kind, t.axis, t.scales, t.zero_point) for t in quantized_tensors(model)}


def count_quantized(model: onnx.ModelProto) -> dict[str, int]:
    """``{"weights": n, "activations": n}``: the distinct quantized tensors (``quantized_tensors``) by kind, the
    counts ``bevnb.quant.expected_qdq`` predicts from the quantizer placement."""
    kinds = Counter(t.kind for t in quantized_tensors(model))
    return {"weights": kinds["weight"], "activations": kinds["activation"]}


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
    paths = node_paths(model)
    labels = part_labels(model, paths)
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


def scope_of(name: str) -> tuple[str, ...]:
    """``/backbone/layer1/layer1.0/conv1/Conv`` → ``("backbone", "layer1", "layer1.0", "conv1")``.

    SubclassCameraModule calls ``vtransform.depth_and_features``, a method, so its layers read ``/dtransform/…``; a
    module that calls ``vtransform`` itself would write ``/vtransform/dtransform/…``: both give the same scope.
    """
    scope = tuple(part for part in name.split("/")[:-1] if part)
    return scope[1:] if scope[:1] == ("vtransform",) else scope


def node_paths(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """Per node, its place in the module tree: its scope, where an unscoped node takes the part its outputs all
    feed (``("backbone",)``) or, failing that, the top-level part ``("",)``."""
    graph = model.graph
    paths: list[tuple[str, ...]] = [scope_of(node.name) for node in graph.node]
    readers = tensor_readers(model)
    outputs = {v.name for v in graph.output}
    for i in reversed(range(len(paths))):  # readers come later in a topologically sorted graph
        if paths[i] or any(out in outputs for out in graph.node[i].output):
            continue
        fed = {paths[j][:1] for out in graph.node[i].output for j in readers.get(out, ())}
        if len(fed) == 1 and () not in fed:
            paths[i] = fed.pop()
    return [path or ("",) for path in paths]


def part_labels(model: onnx.ModelProto, paths: list[tuple[str, ...]]) -> dict[str, str]:
    """Part key → label: ``PART_LABELS`` for known scopes, the top-level part's op types joined for ``""``."""
    labels = {path[0]: PART_LABELS.get(path[0], path[0]) for path in paths}
    rest = [
        n.op_type for n, path in zip(model.graph.node, paths, strict=True) if path == ("",) and n.op_type != "Constant"
    ]
    labels[""] = "/".join(dict.fromkeys(rest)) or "top level"
    return labels


def crossings(model: onnx.ModelProto, groups: list[tuple[str, ...]]) -> list[tuple[tuple, tuple, str]]:
    """``(source, destination, tensor)`` for every tensor that leaves its node's group (``groups[i]`` is node i's,
    e.g. ``node_paths(model)[i][:1]`` for the parts): graph inputs come from ``("in", name)``, graph outputs go to
    ``("out", name)``; weights and scales (initializers, Constant nodes) are not crossings."""
    stored = stored_tensors(model)
    source = {v.name: ("in", v.name) for v in graph_inputs(model)}
    for node, group in zip(model.graph.node, groups, strict=True):
        source.update((out, group) for out in node.output)
    found = []
    for node, group in zip(model.graph.node, groups, strict=True):
        for tensor in node.input:
            if tensor in source and tensor not in stored and source[tensor] != group:
                found.append((source[tensor], group, tensor))
    found += [(source[v.name], ("out", v.name), v.name) for v in model.graph.output]
    return found


# --- diff --------------------------------------------------------------------------------------------------------


@dataclass
class GraphDiff:
    """What turns graph ``a`` into graph ``b``.

    * ``ops``: op type → (count in a, count in b), changed ones only;
    * ``qdq``: (part, what reads the dequantized tensor: ``"weight → Conv"``, ``"activation → Conv+Add"``) →
      quantized tensors (``quantized_tensors``) in b minus those in a;
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
            lines.append("quantized tensors added, by part and by what reads the dequantized tensor:")
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
    for sign, rows in ((-1, quantized_tensors(a)), (1, quantized_tensors(b))):
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
    stored = stored_tensors(model)
    readers = tensor_readers(model)

    def source(tensor: str) -> str:
        node = producer.get(tensor)
        while node is not None and node.op_type in QDQ_OPS:
            tensor = node.input[0]
            node = producer.get(tensor)
        return tensor

    plain = {}
    for node in graph.node:
        feeds_qdq_only = node.op_type == "Constant" and all(
            graph.node[j].op_type in QDQ_OPS for out in node.output for j in readers.get(out, ())
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
    sections.append(qdq_summary(model) if quantized_tensors(model) else "Q/DQ: none (a float graph)")
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


def boundary_table(model: onnx.ModelProto) -> Table:
    """The tensors that cross from one part to another, with their shapes: the borders in upstream's screenshots."""
    paths = node_paths(model)
    labels = part_labels(model, paths)
    shapes = tensor_shapes(model)
    rows = {}
    for src, dst, tensor in crossings(model, [path[:1] for path in paths]):
        ends = [{"in": "input", "out": "output"}.get(end[0], labels.get(end[0])) for end in (src, dst)]
        rows[tensor] = (*ends, tensor, shapes[tensor].shape)
    return Table(rows.values(), ["from", "to", "tensor", "shape"], "tensors between the parts")


def qdq_summary(model: onnx.ModelProto) -> Table:
    """Quantized tensors (``quantized_tensors``) per part: weights (per channel) and activations (per tensor)."""
    found: dict[str, Counter] = {}
    for row in quantized_tensors(model):
        found.setdefault(row.part, Counter())[row.kind] += 1
    rows = [(part, c["weight"], c["activation"]) for part, c in found.items()]
    rows.append(("all", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return Table(rows, ["part", "weights", "activations"], "quantized tensors (Q/DQ) per part")


def qdq_table(model: onnx.ModelProto, limit: int | None = None) -> Table:
    """The first ``limit`` (all by default) quantized tensors: quantizer, part, kind, axis, scale(s), what reads
    them."""
    rows = [
        (r.quantizer, r.part, r.kind, "-" if r.axis is None else r.axis, r.scale_text, "+".join(r.consumers))
        for r in quantized_tensors(model)[:limit]
    ]
    return Table(rows, ["quantizer", "part", "kind", "axis", "scale", "read by"], "quantized tensors (Q/DQ)")


def tree_text(model: onnx.ModelProto, depth: int = 2) -> str:
    """The module tree, indented ``depth`` levels: name, nodes, top ops, Q/DQ and Constant nodes. A module's own
    nodes (those in no child) get their own line, so every level adds up."""
    lines = []

    def line(indent: int, name: str, ops: Counter) -> None:
        qdq = sum(ops[op] for op in QDQ_OPS)
        extra = (f", Q/DQ {qdq}" if qdq else "") + (f", Constant {ops['Constant']}" if ops["Constant"] else "")
        lines.append(
            f"{'  ' * indent}{name:{44 - 2 * indent}s} {sum(ops.values()):5d} nodes  {top_ops_text(ops)}{extra}"
        )

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


# --- building blocks (shared with bevnb.drawing) ---------------------------------------------------------------------


def top_ops_text(ops: Counter, n: int = 3) -> str:
    """``Conv 53 · Relu 49 · Add 16``: the most frequent ops other than Q/DQ and Constant."""
    return " · ".join([f"{op} {k}" for op, k in ops.most_common() if op not in (*QDQ_OPS, "Constant")][:n])


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (older exporters list the weights as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def tensor_readers(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name → indices of the nodes that read it."""
    found: dict[str, list[int]] = {}
    for i, node in enumerate(model.graph.node):
        for tensor in node.input:
            found.setdefault(tensor, []).append(i)
    return found


def stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors by name (not converted: the big ones are never copied)."""
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = value
    return found


def shape_text(shape: tuple) -> str:
    """``(6, 32, 88, 80)`` → ``[6, 32, 88, 80]``."""
    return "[" + ", ".join(map(str, shape)) + "]"


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
