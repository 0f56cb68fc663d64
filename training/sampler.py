"""The latent protocol (``service.latents``) as ONNX nodes, and the generator graph with them in front.

An exported generator takes image seeds, not latents: ``seeds`` int64[N], ``truncation`` float32[N] (inf: none)
and, when conditional, ``labels`` int64[N] (-1: by seed). The sampler nodes draw z inside the same onnxruntime run,
on whatever provider runs the model, and the graph also returns the ``z`` and ``label`` it drew from (computed only
when asked for). Only operators that both the CPU and the CUDA providers implement for these types are used:
Add, Sub, Mul, Div, Mod on uint64/int64, Cast, Erf, Log, Sqrt, Less, Where on float32 (no bitwise operators, which
CUDA lacks). ``tests/test_sampler.py`` holds the graph to the numpy reference.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.latents import CENTRE, CENTRE_LIMIT, KEY, TAIL

__all__ = ["CUDA_AND_CPU_OPS", "INTEGER_STAGE", "OPSET", "sampler_graph", "sampler_model", "with_sampler"]

OPSET = 20
IR_VERSION = 10  # what onnxruntime 1.20 and later read
_PREFIX = "sampler/"
INTEGER_STAGE = f"{_PREFIX}k"  # the tensor of squares32 outputs: tests compare it bit for bit
# The sampler's operators. onnxruntime's OperatorKernels.md lists a CUDA kernel for each with the types used here
# (Add, Sub, Mul, Div on uint64; Mod, GreaterOrEqual, Where on int64; Cast int64 -> uint64 -> float; Erf, Log,
# Sqrt, Less, Where on float; And on bool), so no node of the sampler should fall back to the CPU on a GPU.
CUDA_AND_CPU_OPS = frozenset(
    {"Add", "And", "Cast", "Erf", "GreaterOrEqual", "Less", "Log", "Mod", "Mul", "Sqrt", "Sub", "Unsqueeze", "Where",
     "Div"}
)  # fmt: skip


class _Builder:
    """Appends nodes and constants with names under ``sampler/``, so they never meet the generator's own."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value, dtype) -> str:
        name = f"{_PREFIX}c{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        self._count += 1
        out = output or f"{_PREFIX}{op_type.lower()}{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{_PREFIX}{self._count}", **attrs))
        return out

    def horner(self, coefficients: tuple[float, ...], x: str) -> str:
        acc = self.const(coefficients[0], np.float32)
        for c in coefficients[1:]:
            acc = self.op("Add", self.op("Mul", acc, x), self.const(c, np.float32))
        return acc


def sampler_graph(latent_dim: int, classes: int) -> onnx.GraphProto:
    """seeds, truncation (+ labels) -> z float32[N, latent_dim] (+ label int64[N]), as ``service.latents`` says."""
    b = _Builder()
    u64 = TensorProto.UINT64
    seeds = b.op("Cast", b.op("Unsqueeze", "seeds", b.const([1], np.int64)), to=u64)  # N x 1
    # y = (seed * 2**32 + j) * KEY, distributed over the sum (mod 2**64): one N x latent_dim Add instead of three
    y = b.op(
        "Add",
        b.op("Mul", seeds, b.const((2**32 * KEY) % 2**64, np.uint64)),
        b.const(np.arange(latent_dim, dtype=np.uint64)[None] * np.uint64(KEY), np.uint64),
    )
    key, half = b.const(KEY, np.uint64), b.const(2**32, np.uint64)
    z = b.op("Add", y, key)
    x = y
    for add in (y, z, y):
        x = b.op("Add", b.op("Mul", x, x), add)
        x = b.op("Add", b.op("Div", x, half), b.op("Mul", x, half))  # rotate by 32 bits
    k = b.op("Div", b.op("Add", b.op("Mul", x, x), z), half, output=INTEGER_STAGE)
    twice = b.op("Mul", k, b.const(2, np.uint64))
    odd_p = b.op("Cast", b.op("Add", twice, b.const(1, np.uint64)), to=TensorProto.FLOAT)  # P = 2k + 1
    odd_q = b.op("Cast", b.op("Sub", b.const(2**33 - 1, np.uint64), twice), to=TensorProto.FLOAT)  # Q = 2**33 - P
    # p = a + (1 - 2a) P / 2**33 with a = Φ(-t) = 1/2 - erf(t/√2)/2 per row (t = inf: a = 0); q likewise
    t = b.op("Unsqueeze", "truncation", b.const([1], np.int64))
    half_erf = b.op("Mul", b.op("Erf", b.op("Mul", t, b.const(1 / np.sqrt(2), np.float32))), b.const(0.5, np.float32))
    a = b.op("Sub", b.const(0.5, np.float32), half_erf)
    span = b.op("Sub", b.const(1, np.float32), b.op("Mul", a, b.const(2, np.float32)))
    span = b.op("Mul", span, b.const(2.0**-33, np.float32))  # (1 - 2a) / 2**33, exact: a power of two
    p = b.op("Add", a, b.op("Mul", span, odd_p))
    q = b.op("Add", a, b.op("Mul", span, odd_q))
    w = b.op("Sub", b.const(-np.log(4), np.float32), b.op("Log", b.op("Mul", p, q)))
    centre = b.horner(CENTRE, b.op("Sub", w, b.const(2.5, np.float32)))
    root = b.op("Sqrt", w)  # NaN where w < 0 from rounding, where the centre polynomial is chosen anyway
    tail = b.horner(TAIL, b.op("Sub", root, b.const(3, np.float32)))
    chosen = b.op("Where", b.op("Less", w, b.const(CENTRE_LIMIT, np.float32)), centre, tail)
    b.op("Mul", chosen, b.op("Sub", p, q), output="z")

    inputs = [helper.make_tensor_value_info("seeds", TensorProto.INT64, ["N"])]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent_dim])]
    if classes:
        by_seed = b.op("Mod", "seeds", b.const(classes, np.int64))
        asked = b.op(
            "And",
            b.op("GreaterOrEqual", "labels", b.const(0, np.int64)),
            b.op("Less", "labels", b.const(classes, np.int64)),
        )
        b.op("Where", asked, "labels", by_seed, output="label")
        inputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"]))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    inputs.append(helper.make_tensor_value_info("truncation", TensorProto.FLOAT, ["N"]))
    return helper.make_graph(b.nodes, "ganserve-sampler", inputs, outputs, b.constants)


def sampler_model(latent_dim: int, classes: int, *, outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The sampler alone as a model (for tests and benchmarks), with extra ``outputs`` such as ``INTEGER_STAGE``."""
    graph = sampler_graph(latent_dim, classes)
    for name in outputs:
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.UINT64, ["N", latent_dim]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def with_sampler(generator: onnx.ModelProto, *, latent_dim: int, classes: int) -> onnx.ModelProto:
    """The generator graph (inputs ``z`` [+ ``labels``]) with the sampler in front: inputs seeds, labels,
    truncation; outputs the generator's, then ``z`` and ``label``."""
    sampler = sampler_graph(latent_dim, classes)
    g = generator.graph
    wanted = {"z"} | ({"labels"} if classes else set())
    if {i.name for i in g.input} != wanted:
        raise ValueError(f"the generator graph must take exactly {sorted(wanted)}, not {[i.name for i in g.input]}")
    for node in g.node:  # the generator reads the label the sampler chose
        node.input[:] = ["label" if name == "labels" else name for name in node.input]
    graph = helper.make_graph(
        list(sampler.node) + list(g.node),
        g.name,
        list(sampler.input),
        list(g.output) + list(sampler.output),
        list(sampler.initializer) + list(g.initializer),
        value_info=list(g.value_info),
    )
    model = helper.make_model(graph, opset_imports=generator.opset_import, functions=generator.functions)
    model.ir_version = generator.ir_version
    model.producer_name, model.producer_version = "ganserve", generator.producer_version
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < OPSET:
        raise ValueError(f"the generator graph must use ONNX opset {OPSET} or later")
    return model
