"""Half-precision numerics for a float graph: what TensorRT's fp16 build does to the numbers, measured on a CPU.

ONNX Runtime on a CPU runs ``camera.backbone.onnx`` and ``camera.vtransform.onnx`` in float32, while TensorRT
builds the same graphs with float16 layers (``--fp16``; and every layer an int8 graph leaves in float). To see
what half precision does without a GPU, ``half_rounded`` rewrites a graph so that every float tensor is *stored* in
float16 and *computed* in float32: each float initializer (weights, biases, Q/DQ scales) is rounded to the nearest
float16, and every float tensor the graph produces or takes in passes through ``Cast(float16)`` and back. A value
beyond float16's range (±65504) becomes ±inf there, as it would in the engine, and whatever reads it turns
non-finite.

How this differs from TensorRT's fp16, so that its numbers are read as what they are:

* TensorRT fuses Conv + bias + ReLU (+ the residual Add) into one kernel, so it rounds once per fused layer, not
  after each of the fused operations; the stand-in rounds more often and errs on the pessimistic side.
* Inside a layer TensorRT's kernels may accumulate in float16 or float32 (its tactic choice); the stand-in always
  accumulates in float32, so it does not show an accumulation overflow inside one convolution.
* TensorRT may keep layers in float32 where float16 is unsafe or slower (its choice, or the user's
  ``--layerPrecisions``); the stand-in rounds everything.

A module of its own because it is neither an exporter (``export``) nor a graph report (``graphs``): it is the one
place that turns a graph's numerics to half. ONNX's own float16 converter (``onnxconverter-common``) would compute in
float16, which ONNX Runtime's CPU provider does not implement for most of these operators.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROUNDED = "/half"  # suffix of the float16 copy each rounded tensor passes through
UNROUNDED = "/unrounded"  # suffix of a producer's float32 output before its rounding


def half_rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with float16 storage and float32 arithmetic (see the module docstring): every float
    initializer rounded to float16 (still float32), and after every float graph input and every node's float output
    a ``Cast`` to float16 and one back. Tensor names are kept: a rounded tensor has its original name, so the graph's
    outputs and any inner tensor exposed by name (``pipeline.OnnxGraph``'s ``extra_outputs``) read the rounded value.
    """
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    float_type = {
        value.name
        for value in (*graph.input, *graph.value_info, *graph.output)
        if value.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    for node in graph.node:  # Constant nodes hold float tensors too; their outputs are rounded below as well
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                rounded = numpy_helper.to_array(attribute.t).astype(np.float16).astype(np.float32)
                attribute.t.CopyFrom(numpy_helper.from_array(rounded))

    nodes: list[onnx.NodeProto] = []
    for value in graph.input:  # the inputs: consumers read the rounded copy
        if value.name in float_type:
            rounded_name = value.name + ROUNDED + "/input"
            nodes += _round(value.name, rounded_name)
            for node in graph.node:
                node.input[:] = [rounded_name if name == value.name else name for name in node.input]
    for node in graph.node:
        outputs = [name for name in node.output if name in float_type]
        node.output[:] = [name + UNROUNDED if name in outputs else name for name in node.output]
        nodes.append(node)
        for name in outputs:
            nodes += _round(name + UNROUNDED, name)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _round(source: str, target: str) -> list[onnx.NodeProto]:
    """``target = float32(float16(source))`` as two Casts."""
    half = target + ROUNDED
    return [
        helper.make_node("Cast", [source], [half], name=half + "/Cast", to=TensorProto.FLOAT16),
        helper.make_node("Cast", [half], [target], name=target + "/Cast", to=TensorProto.FLOAT),
    ]
