"""Per-layer quantization error: float activations against their quantized counterparts.

Both models run in onnxruntime on the same samples with the paired tensors added as graph
outputs (as RKNN's accuracy analysis and onnxruntime's qdq_loss_debug do). Per pair the
figures accumulate across samples in float64, so memory stays at one sample's tensors:

    cosine = <f, q> / (||f|| ||q||)        rel_l2 = ||q - f|| / ||f||        max_abs = max |q - f|

where the dot products and squared norms are sums over all samples (one long vector).
Conventions: cosine is 1 when both tensors are all zeros and 0 when exactly one is;
rel_l2 is 0 when both are zero and infinite when only f is. Positions where either value
is not finite are left out of the sums; if the two disagree there (inf against a number,
NaN against a number), max_abs is infinite.

Automatic pairing (`pairs=None`): a float32 tensor `t` computed by a node of the float
graph pairs with the quantized graph's value of the same name when that exists, is
computed by a node (not an input or initializer) and is float32. QDQ models keep the
float ops' output names, so `t` is found; when `t` feeds a QuantizeLinear whose output
feeds a DequantizeLinear there, the DequantizeLinear's output is taken instead: that is
what the next layer actually reads, so its error includes the activation's own rounding.
Tensors other than float32 are paired only when the graph declares their type (an
undeclared one would be emitted as float32, which onnxruntime would reject). Constant
nodes are not compared (equal in both by construction).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from homec import dtypes as D
from homec.ir import Graph, Node, TensorType, Value

FLOAT_TYPES = frozenset({D.FLOAT, D.FLOAT16, D.DOUBLE, D.BFLOAT16})


@dataclasses.dataclass
class LayerError:
    """The error of one quantized tensor against its float reference, over `samples` runs."""

    name: str  # the float graph's tensor
    node: str  # the float node computing it
    op_type: str
    cosine: float
    rel_l2: float
    max_abs: float
    samples: int
    quant_name: str = ""  # the quantized graph's tensor it was compared with


def layer_errors(float_graph: Graph, quant_graph: Graph, pairs: Sequence[tuple[str, str]] | None,
                 samples: Iterable[Mapping[str, np.ndarray]], *, max_samples: int = 8,
                 threads: int = 1) -> list[LayerError]:
    """The error of every paired tensor (float name, quantized name), in the float graph's
    topological order (tensors that are graph inputs first).

    `pairs=None` pairs automatically (see the module docstring). Samples feed both models
    (keys neither model takes are ignored); at most `max_samples` are run. An explicit pair
    naming a missing tensor, or whose two tensors differ in shape, raises ValueError; an
    automatic pair whose shapes differ is left out.
    """
    from homec.onnx_io import export_with_outputs
    from homec.verify import make_session

    automatic = pairs is None
    pair_list = auto_pairs(float_graph, quant_graph) if automatic else list(pairs)
    if not automatic:
        for f_name, q_name in pair_list:
            for g, n, which in ((float_graph, f_name, "float"), (quant_graph, q_name, "quantized")):
                if g.value(n) is None:
                    raise ValueError(f"layer_errors: the {which} graph has no tensor {n!r}")
    if not pair_list:
        return []
    f_names = list(dict.fromkeys(f for f, _ in pair_list))
    q_names = list(dict.fromkeys(q for _, q in pair_list))
    f_sess = make_session(export_with_outputs(float_graph, f_names), threads=threads, quiet=True)
    q_sess = make_session(export_with_outputs(quant_graph, q_names), threads=threads, quiet=True)
    f_inputs = {i.name for i in f_sess.get_inputs()}
    q_inputs = {i.name for i in q_sess.get_inputs()}

    acc = [_Accumulator() for _ in pair_list]
    for i, sample in enumerate(samples):
        if i >= max_samples:
            break
        f_out = dict(zip(f_names, f_sess.run(f_names, {k: v for k, v in sample.items() if k in f_inputs})))
        q_out = dict(zip(q_names, q_sess.run(q_names, {k: v for k, v in sample.items() if k in q_inputs})))
        for a, (f_name, q_name) in zip(acc, pair_list):
            f, q = np.asarray(f_out[f_name]), np.asarray(q_out[q_name])
            if f.shape != q.shape:
                if not automatic:
                    raise ValueError(f"layer_errors: {f_name!r} has shape {f.shape} but "
                                     f"{q_name!r} has shape {q.shape}")
                a.incomparable = True
                continue
            a.add(f, q)

    order = _topological_rank(float_graph)
    results = []
    for a, (f_name, q_name) in zip(acc, pair_list):
        if a.incomparable or a.samples == 0:
            continue
        v = float_graph.value(f_name)
        producer = v.producer if v is not None else None
        results.append(LayerError(f_name, producer.name if producer else "",
                                  producer.op_type if producer else "", a.cosine(), a.rel_l2(),
                                  a.max_abs, a.samples, q_name))
    results.sort(key=lambda e: order.get(e.name, -1))
    return results


def auto_pairs(float_graph: Graph, quant_graph: Graph) -> list[tuple[str, str]]:
    """(float tensor, quantized tensor) pairs by name (see the module docstring)."""
    f_types = _types(float_graph)
    q_types = _types(quant_graph)
    pairs = []
    for node in float_graph.nodes:
        if node.op_type == "Constant" and node.domain == "":
            continue
        for out in node.outputs:
            if out is None or not out.name or not _comparable(out, f_types):
                continue
            q = quant_graph.value(out.name)
            if q is None or q.graph is not quant_graph or q.producer is None:
                continue
            if not _comparable(q, q_types):
                continue
            pairs.append((out.name, _after_qdq(q).name))
    return pairs


def _types(graph: Graph) -> dict[str, TensorType]:
    try:
        from homec.analysis.shapes import infer_shapes

        return infer_shapes(graph, symbolic_fallback=False)
    except Exception:  # inference is best effort; declared types remain
        return {}


def _comparable(v: Value, inferred: Mapping[str, TensorType]) -> bool:
    declared = v.tensor_type()
    if declared is not None and declared.elem_type:
        return declared.elem_type in FLOAT_TYPES
    t = inferred.get(v.name)
    return t is not None and t.elem_type == D.FLOAT


def _after_qdq(v: Value) -> Value:
    """The output of a QuantizeLinear -> DequantizeLinear pair reading `v`, else `v`."""
    for user in v.users:
        if not _is_op(user, "QuantizeLinear") or user.inputs[0] is not v or user.outputs[0] is None:
            continue
        for dq in user.outputs[0].users:
            if _is_op(dq, "DequantizeLinear") and dq.inputs[0] is user.outputs[0] and dq.outputs[0] is not None:
                return dq.outputs[0]
    return v


def _is_op(node: Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "com.microsoft")


def _topological_rank(graph: Graph) -> dict[str, int]:
    rank: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            if out is not None and out.name:
                rank[out.name] = i
    return rank


class _Accumulator:
    """Running sums for one tensor pair (float64)."""

    def __init__(self) -> None:
        self.dot = 0.0
        self.f_sq = 0.0
        self.q_sq = 0.0
        self.diff_sq = 0.0
        self.max_abs = 0.0
        self.samples = 0
        self.incomparable = False

    def add(self, f: np.ndarray, q: np.ndarray) -> None:
        f = f.astype(np.float64, copy=False).ravel()
        q = q.astype(np.float64, copy=False).ravel()
        finite = np.isfinite(f) & np.isfinite(q)
        if not finite.all():
            fn, qn = f[~finite], q[~finite]
            same = (fn == qn) | (np.isnan(fn) & np.isnan(qn))
            if not same.all():
                self.max_abs = math.inf
            f, q = f[finite], q[finite]
        d = q - f
        self.dot += float(f @ q)
        self.f_sq += float(f @ f)
        self.q_sq += float(q @ q)
        self.diff_sq += float(d @ d)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.samples += 1

    def cosine(self) -> float:
        if self.f_sq == 0.0 and self.q_sq == 0.0:
            return 1.0
        if self.f_sq == 0.0 or self.q_sq == 0.0:
            return 0.0
        return float(np.clip(self.dot / math.sqrt(self.f_sq * self.q_sq), -1.0, 1.0))

    def rel_l2(self) -> float:
        if self.f_sq == 0.0:
            return 0.0 if self.diff_sq == 0.0 else math.inf
        return math.sqrt(self.diff_sq / self.f_sq)


def _sig(x: float, digits: int) -> float | None:
    """`x` rounded to `digits` significant digits; None for inf/NaN (not valid JSON)."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def to_report(errors: Iterable[LayerError]) -> list[dict]:
    """JSON-ready rows: cosine to 6 decimals (its interesting part is 1 - cosine), errors to
    4 significant digits, infinities and NaNs as null."""
    rows = []
    for e in errors:
        rows.append({
            "tensor": e.name,
            "quantized_tensor": e.quant_name or e.name,
            "node": e.node,
            "op_type": e.op_type,
            "cosine": round(e.cosine, 6) if math.isfinite(e.cosine) else None,
            "rel_l2": _sig(e.rel_l2, 4),
            "max_abs": _sig(e.max_abs, 4),
            "samples": e.samples,
        })
    return rows


def format_table(errors: Sequence[LayerError], top: int | None = None) -> str:
    """A plain-text table: every tensor in topological order, or with `top` the `top`
    largest relative errors, worst first."""
    rows = list(errors)
    if top is not None:
        rows = sorted(rows, key=lambda e: -e.rel_l2 if not math.isnan(e.rel_l2) else math.inf)[:top]
    header = ("tensor", "op", "cosine", "rel_l2", "max_abs")
    body = [(e.name, e.op_type, f"{e.cosine:.6f}", f"{e.rel_l2:.4g}", f"{e.max_abs:.4g}") for e in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric = (False, False, True, True, True)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out)
