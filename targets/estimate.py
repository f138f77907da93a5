"""Latency estimates from a target's compute model (a roofline), and measured latency.

    est = estimate(graph, types, target, devices, qdq_fused=True)
    est.total_ms, est.as_dict()
    measure_latency(model, feeds, runs=20) -> {"median_ms", "p90_ms", "min_ms", ...}

The roofline, per top-level node (Constant nodes are weights, not layers):

    device  = devices[node] (missing or None: target.device)
    model   = target.compute on the accelerator (device == target.device), else
              target.fallback_compute (or target.compute when the target has none)
    dtype   = device_view.compute_dtype(node): a float op between DequantizeLinear and
              QuantizeLinear computes in the quantized type
    rate    = model.throughput(dtype) MACs/cycle; an unsigned type the model does not list
              runs at its signed twin's rate (uint8 at the int8 rate)
    macs    = analysis.cost.layer_costs (elementwise ops, pooling: 0); a count needing a
              dynamic dim, a custom-domain op or a node with subgraphs counts 0 and the
              layer is `unknown`
    bytes   = activations read and written + weights read, where
              activations: device_view.device_bytes of every distinct non-constant input
                and output. When QDQ is fused (`qdq_fused`) the float tensors between Q/DQ do
                not exist; the kernel reads and writes the integer tensors behind them, so a
                fused-away input counts as its DequantizeLinear's input and a fused-away
                output as the QuantizeLinear outputs reading it.
              weights: the stored size of the constants each constant input is computed
                from (an initializer, a Constant node; for DQ(w_int8, scale, zero_point) the
                three stored tensors), counted at every consumer that reads them.
              A tensor of unknown size counts 0 and makes the layer `unknown`.
    cycles  = max(macs / rate, bytes / (bandwidth / clock_hz)) + overhead_cycles
    bound   = the largest of the three terms: "compute", "memory" or "overhead" (ties go
              to memory, then compute)
    ms      = cycles / clock_hz * 1e3

Free nodes cost 0 cycles and 0 bytes (bound "memory": they only move data, and none here):
views (Reshape, Flatten, Squeeze, Unsqueeze, Identity: aliases in the memory plan), nodes
computing constants only (folded when the model loads, e.g. the DequantizeLinear of a
weight), and on a qdq_fused device the QuantizeLinear / DequantizeLinear whose float side is
fused away. A Q reading a real float tensor (a graph input) or a DQ writing one (a graph
output) is a conversion and is priced like any elementwise op.

Transitions: every activation crossing devices costs `target.transition_us`, counted as
placement counts them: once per (value, consumer device) pair whose producer runs on another
device (graph inputs and constants never transit).

    total_ms = sum(layer ms) + transitions * transition_us / 1e3

The model ignores caches, overlap of transfer and compute, and op workspace: it ranks
layers and schedules, it does not promise a latency. `measure_latency` runs onnxruntime.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from homec.analysis.cost import is_constant, layer_costs
from homec.analysis.memory import tensor_bytes
from homec.errors import UnsupportedError, UsageError
from homec.ir import Graph, Node, SparseTensor, Tensor, TensorType, Value
from homec.targets.descriptor import ComputeModel, Target
from homec.targets.device_view import (QDQ_OPS, VIEW_OPS, compute_dtype, device_bytes, fused_away,
                                       fused_into, node_label)

__all__ = ["Estimate", "LayerEstimate", "estimate", "measure_latency"]

_BOUND_ORDER = ("memory", "compute", "overhead")  # tie-break: first listed wins


@dataclasses.dataclass(frozen=True)
class LayerEstimate:
    """The roofline of one node (see the module doc). `unknown`: macs or some tensor size
    was not known and counted as 0, so cycles are a lower bound."""

    node: str
    op: str
    device: str
    dtype: str | None
    macs: int
    bytes: int
    cycles: float
    ms: float
    bound: str
    unknown: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "device": self.device, "dtype": self.dtype,
                "macs": self.macs, "bytes": self.bytes, "cycles": _sig(self.cycles),
                "ms": _sig(self.ms), "bound": self.bound}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Estimated latency of a placed graph: per layer, per device, and the transitions."""

    total_ms: float
    by_device: Mapping[str, float]
    transitions: int
    transitions_ms: float
    layers: tuple[LayerEstimate, ...]

    @property
    def unknown(self) -> tuple[str, ...]:
        """Layers whose estimate is a lower bound (a MAC count or tensor size unknown)."""
        return tuple(layer.node for layer in self.layers if layer.unknown)

    def as_dict(self) -> dict[str, Any]:
        """The agreed report shape; floats rounded to 6 significant digits (stable JSON).
        `unknown` lists the layers counted as lower bounds."""
        return {
            "total_ms": _sig(self.total_ms),
            "by_device": {d: _sig(ms) for d, ms in sorted(self.by_device.items())},
            "transitions": self.transitions,
            "transitions_ms": _sig(self.transitions_ms),
            "layers": [layer.as_dict() for layer in self.layers],
            "unknown": list(self.unknown),
        }


def _sig(x: float) -> float:
    """`x` rounded to 6 significant digits."""
    return float(f"{x:.6g}")


# ---------------------------------------------------------------------------------------
# Roofline
# ---------------------------------------------------------------------------------------


def estimate(graph: Graph, types: Mapping[str, TensorType], target: Target,
             devices: Mapping[str, str | None], *, qdq_fused: bool) -> Estimate:
    """Per-layer roofline latency of `graph` placed by `devices` (node name -> device) on
    `target`, plus the transitions between devices (see the module doc)."""
    macs_of = {c.node: c.macs for c in layer_costs(graph, types)}
    memo: dict[int, bool] = {}
    const = lambda v: is_constant(v, memo)  # noqa: E731 — one memo for the whole walk

    nodes = [n for n in graph.nodes if not (n.op_type == "Constant" and n.domain == "")]
    device_of = {id(n): devices.get(node_label(n)) or target.device for n in nodes}
    layers = []
    for node in nodes:
        device = device_of[id(node)]
        model = target.compute if device == target.device else (target.fallback_compute or target.compute)
        layers.append(_layer(node, types, model, device, macs_of, const, qdq_fused, memo))

    transitions = _transitions(graph, nodes, device_of, const)
    transitions_ms = transitions * target.transition_us / 1e3
    by_device: dict[str, float] = {}
    for layer in layers:
        by_device[layer.device] = by_device.get(layer.device, 0.0) + layer.ms
    total = math.fsum(layer.ms for layer in layers) + transitions_ms
    return Estimate(total, dict(sorted(by_device.items())), transitions, transitions_ms,
                    tuple(layers))


def _layer(node: Node, types: Mapping[str, TensorType], model: ComputeModel, device: str,
           macs_of: Mapping[str, int | None], const, qdq_fused: bool, memo: dict) -> LayerEstimate:
    label = node_label(node)
    dtype = compute_dtype(node, types, memo)
    if _is_free(node, const, qdq_fused, memo):
        return LayerEstimate(label, node.op_type, device, dtype, 0, 0, 0.0, 0.0, "memory")

    unknown = node.domain != "" or bool(node.subgraphs())
    macs = macs_of.get(label, 0)
    if macs is None:
        macs, unknown = 0, True
    nbytes, bytes_unknown = _bytes_moved(node, types, const, qdq_fused, memo)
    unknown = unknown or bytes_unknown

    compute_cycles = macs / model.throughput(dtype)
    memory_cycles = nbytes / (model.bandwidth / model.clock_hz)
    terms = {"compute": compute_cycles, "memory": memory_cycles, "overhead": model.overhead_cycles}
    bound = max(_BOUND_ORDER, key=lambda k: (terms[k], -_BOUND_ORDER.index(k)))
    cycles = max(compute_cycles, memory_cycles) + model.overhead_cycles
    return LayerEstimate(label, node.op_type, device, dtype, int(macs), int(nbytes), cycles,
                         cycles / model.clock_hz * 1e3, bound, unknown)


def _is_free(node: Node, const, qdq_fused: bool, memo: dict) -> bool:
    """Views, constant computations, fused Q/DQ glue and fused activations cost nothing
    (module doc)."""
    if node.domain != "":
        return False
    if node.op_type in VIEW_OPS:
        return True
    if qdq_fused and fused_into(node, memo) is not None:
        return True  # runs inside its layer's kernel, which writes the quantized result
    outs = [o for o in node.outputs if o is not None and o.name]
    if outs and all(const(o) for o in outs):
        return True
    if qdq_fused and node.op_type in QDQ_OPS:
        float_side = node.inputs[0] if node.op_type == "QuantizeLinear" else node.outputs[0]
        return float_side is not None and fused_away(float_side, qdq_fused=True, memo=memo)
    return False


def _bytes_moved(node: Node, types: Mapping[str, TensorType], const,
                 qdq_fused: bool, memo: dict) -> tuple[int, bool]:
    """(bytes read and written, whether some size was unknown) of a working node."""
    total, unknown = 0, False
    seen: set[int] = set()
    activations: list[Value] = []
    weights: list[Value] = []
    for v in node.inputs:
        if v is None or not v.name:
            continue
        if const(v):
            weights.append(v)
        else:
            activations.extend(_device_tensors(v, qdq_fused, memo, as_input=True))
    for v in node.outputs:
        if v is not None and v.name:
            activations.extend(_device_tensors(v, qdq_fused, memo, as_input=False))
    for v in activations:
        if id(v) in seen:
            continue
        seen.add(id(v))
        n = device_bytes(v, types, qdq_fused=qdq_fused, memo=memo)
        if n is None:
            unknown = True
        total += n or 0
    for leaf in _constant_leaves(weights, const):
        if id(leaf) in seen:
            continue
        seen.add(id(leaf))
        n = _stored_bytes(leaf, types)
        if n is None:
            unknown = True
        total += n or 0
    return total, unknown


def _device_tensors(v: Value, qdq_fused: bool, memo: dict, *, as_input: bool) -> list[Value]:
    """The tensors a kernel really touches for `v`: itself, or when it is a fused-away
    float view, the integer tensor behind it (DQ input; Q outputs, also those after a fused
    activation)."""
    if not fused_away(v, qdq_fused=qdq_fused, memo=memo):
        return [v]
    p = v.producer
    if as_input and p is not None and p.op_type == "DequantizeLinear" and p.domain == "":
        return [p.inputs[0]] if p.inputs and p.inputs[0] is not None else []
    if not as_input:
        users = v.users
        if len(users) == 1 and fused_into(users[0], memo) is p:
            users = [u for o in users[0].outputs if o is not None for u in o.users]
        return [o for u in users if u.op_type == "QuantizeLinear" for o in u.outputs[:1]
                if o is not None]
    return [v]


def _constant_leaves(values: Sequence[Value], const) -> list[Value]:
    """The stored constants (initializers, Constant-node outputs) `values` are computed from."""
    out: list[Value] = []
    seen: set[int] = set()
    stack = list(values)
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        p = v.producer
        if v.is_initializer or p is None or (p.op_type == "Constant" and p.domain == ""):
            out.append(v)
        else:
            stack.extend(i for i in p.inputs if i is not None and i.name and const(i))
    return sorted(out, key=lambda v: v.name)


def _stored_bytes(v: Value, types: Mapping[str, TensorType]) -> int | None:
    if isinstance(v.const, Tensor):
        return v.const.nbytes
    if isinstance(v.const, SparseTensor):
        return v.const.values.nbytes + v.const.indices.nbytes
    p = v.producer
    if p is not None:
        t = p.attr("value")
        if isinstance(t, Tensor):
            return t.nbytes
    return tensor_bytes(types.get(v.name) or v.tensor_type())


def _transitions(graph: Graph, nodes: Sequence[Node], device_of: Mapping[int, str], const) -> int:
    """(value, consumer device) pairs whose producer runs on another device."""
    owner = {id(n): n for n in nodes}
    for n in nodes:
        for sg in n.subgraphs():
            for inner in sg.all_nodes():
                owner[id(inner)] = n  # a body's read is its owning node's
    pairs: set[tuple[str, str]] = set()
    for n in nodes:
        src = device_of[id(n)]
        for v in n.outputs:
            if v is None or not v.name or const(v):
                continue
            for u in v.users:
                top = owner.get(id(u))
                if top is not None and device_of[id(top)] != src:
                    pairs.add((v.name, device_of[id(top)]))
    return len(pairs)


# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------


def measure_latency(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], *,
                    runs: int = 20, warmup: int = 3, threads: int = 1) -> dict[str, Any]:
    """Wall-clock latency of `model` in onnxruntime's CPU provider: all graph optimizations,
    `threads` intra-op threads, one inter-op thread, sequential execution. `warmup` untimed
    runs, then `runs` timed ones (time.perf_counter), cycling through `feeds`.

    Returns {"median_ms", "p90_ms", "min_ms", "runs", "threads", "provider", "onnxruntime"}.
    p90 is the nearest-rank 90th percentile of the timed runs.
    """
    import onnxruntime as ort

    from homec.verify import first_line, make_session

    if runs < 1 or warmup < 0 or threads < 1:
        raise UsageError(f"measure: runs >= 1, warmup >= 0, threads >= 1 needed "
                         f"(got runs={runs}, warmup={warmup}, threads={threads})")
    if not feeds:
        raise UsageError("measure: no input samples to run the model on")
    try:
        sess = make_session(model, optimize=True, threads=threads, quiet=True)
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedError(f"onnxruntime cannot load the model: {first_line(e)}") from None
    names = {i.name for i in sess.get_inputs()}
    samples = [{k: v for k, v in f.items() if k in names} for f in feeds]
    times: list[float] = []
    try:
        for i in range(warmup + runs):
            sample = samples[i % len(samples)]
            t0 = time.perf_counter()
            sess.run(None, sample)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    except Exception as e:
        raise UnsupportedError(f"onnxruntime cannot run the model: {first_line(e)}") from None
    ordered = sorted(times)
    return {
        "median_ms": _sig(statistics.median(ordered)),
        "p90_ms": _sig(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]),
        "min_ms": _sig(ordered[0]),
        "runs": runs,
        "threads": threads,
        "provider": "CPUExecutionProvider",
        "onnxruntime": ort.__version__,
    }
