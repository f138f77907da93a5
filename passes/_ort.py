"""Run a small set of IR nodes in onnxruntime: the shared evaluator of folding passes.

`evaluate(graph, nodes, outputs, feeds)` copies `nodes` into a fresh top-level IR graph with
the model's opset imports (so every op keeps the semantics of its version), turns the values
they read from outside the set into graph inputs fed with their arrays (constants feed
themselves), emits it through the normal emitter and runs it with graph optimizations
disabled and one thread, so results do not depend on the machine's core count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from homec.dtypes import onnx_dtype_of
from homec.ir import Dim, Graph, ModelInfo, Node, TensorType, Value

from ._util import const_of


class EvalError(Exception):
    """onnxruntime could not build or run the extracted subgraph."""


def evaluate(
    graph: Graph,
    nodes: Sequence[Node],
    outputs: Sequence[Value],
    feeds: Mapping[Value, np.ndarray] | None = None,
) -> list[Any]:
    """Values of `outputs` computed by `nodes` (in topological order) from their inputs.

    Inputs produced outside `nodes` must be constants or given in `feeds`. Raises EvalError
    when onnxruntime refuses the model or fails to run it.
    """
    feeds = dict(feeds or {})
    root = graph.root
    info = root.model or ModelInfo()
    tmp = Graph("homec_eval")
    tmp.model = ModelInfo(ir_version=max(info.ir_version, 3), opset_imports=list(info.opset_imports),
                          functions=info.functions)
    produced = {id(o) for n in nodes for o in n.outputs if o is not None}
    mapping: dict[int, Value] = {}
    ort_feeds: dict[str, np.ndarray] = {}

    def source(v: Value) -> Value:
        got = mapping.get(id(v))
        if got is not None:
            return got
        arr = feeds.get(v)
        if arr is None:
            arr = const_of(v)
        if arr is None:
            raise EvalError(f"value {v.name!r} is neither constant nor fed")
        arr = np.asarray(arr)
        t = TensorType(onnx_dtype_of(arr.dtype), tuple(Dim(value=int(d)) for d in arr.shape))
        nv = tmp.add_input(v.name, t)
        mapping[id(v)] = nv
        ort_feeds[v.name] = arr
        return nv

    for n in nodes:
        ins = [None if v is None else (mapping[id(v)] if id(v) in produced else source(v))
               for v in n.inputs]
        outs = [None if o is None else Value(o.name) for o in n.outputs]
        copy = Node(n.op_type, ins, outs, domain=n.domain, name=n.name, overload=n.overload,
                    attrs=list(n.attrs.values()))
        tmp.append(copy)
        for o, c in zip(n.outputs, outs):
            if o is not None and c is not None:
                mapping[id(o)] = c
    try:
        tmp.set_outputs([mapping[id(o)] for o in outputs])
    except KeyError as e:
        raise EvalError("an output is not produced by the given nodes") from e
    return run_model_bytes(tmp.to_onnx().SerializeToString(), ort_feeds,
                           [o.name for o in outputs])


def run_model_bytes(model: bytes, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[Any]:
    from homec.verify import make_session

    try:
        sess = make_session(model, quiet=True)
        return sess.run(list(output_names), dict(feeds))
    except Exception as e:  # onnxruntime raises its own exception types
        raise EvalError(f"{type(e).__name__}: {e}") from None


def as_tensor(result: Any) -> np.ndarray | None:
    """A result usable as an initializer (a numeric or bool numpy array), else None."""
    if not isinstance(result, np.ndarray) or result.dtype.kind not in "biuf":
        return None
    return result


__all__ = ["EvalError", "as_tensor", "evaluate", "run_model_bytes"]
