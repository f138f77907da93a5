"""Fuse MatMul with a constant right operand and a following bias Add into Gemm."""

from __future__ import annotations

from homec import dtypes as D
from homec.context import PassContext
from homec.ir import Graph, Node, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import Names, Types, all_graphs, can_replace, input_const, is_const, opset, replace_value

_DTYPES = {D.FLOAT, D.DOUBLE}  # Gemm kernels every supported onnxruntime has on CPU


@register_pass("fuse_matmul_add", tolerance=Tolerance.float_refold())
def fuse_matmul_add(graph: Graph, ctx: PassContext) -> Stats:
    """Rewrite Add(MatMul(A, B), c) as Gemm(A, B, c).

    Algebra: for A of known rank 2 [M, K] and a constant B [K, N], MatMul(A, B) + c equals
    Gemm(A, B, c; alpha=1, beta=1, transA=0, transB=0) whenever c broadcasts to [M, N]
    without changing it: c is a scalar, [1], [N], [1, N], [1, 1], [M, 1] or [M, N] with M
    static (a c with a larger leading dim would make the Add's result bigger than [M, N]).
    The Add's operands may come in either order. Only float and double are fused (Gemm
    kernels for them exist in every supported onnxruntime). Gemm accumulates the bias in
    the same product, which can round differently: float_refold tolerance.

    Nothing is deleted that is read elsewhere: the MatMul's output must be read by this Add
    only and must not be a graph output; otherwise the pair is left alone. The Gemm's output
    takes the Add's output name (so a graph output keeps its name). Requires opset >= 7
    (Gemm's unidirectional broadcast of C). Both nodes must be selected.

    Statistics: fused.
    """
    st = {"fused": 0}
    types = Types(graph)
    names = Names(graph)
    for g in list(all_graphs(graph)):
        if opset(g) < 7:
            continue
        for add in g.nodes:
            if add.graph is not g or add.op_type != "Add" or add.domain != "" or not ctx.selected(add):
                continue
            if len(add.inputs) != 2 or add.outputs[0] is None:
                continue
            for mm_slot in (0, 1):
                if _try(g, add, mm_slot, types, ctx, names):
                    st["fused"] += 1
                    break
    return st


def _try(g: Graph, add: Node, mm_slot: int, types: Types, ctx: PassContext, names: Names) -> bool:
    y, c = add.inputs[mm_slot], add.inputs[1 - mm_slot]
    mm = y.producer if y is not None else None
    if mm is None or mm.op_type != "MatMul" or mm.domain != "" or mm.graph is not g:
        return False
    if not ctx.selected(mm) or c is None or not is_const(c):
        return False
    if len(y.uses) != 1 or y.is_graph_output:
        return False  # the MatMul result is needed by someone else: keep it
    a, b = mm.inputs
    barr, carr = input_const(mm, 1), c.const.numpy()  # type: ignore[union-attr]
    dims = types.dims(a)
    if barr is None or barr.ndim != 2 or dims is None or len(dims) != 2:
        return False
    if b.const.dtype not in _DTYPES or c.const.dtype != b.const.dtype:  # type: ignore[union-attr]
        return False
    if types.elem(a) not in (None, b.const.dtype):  # type: ignore[union-attr]
        return False
    k, n = barr.shape
    m = dims[0]
    if dims[1] is not None and dims[1] != k:
        return False
    cs = carr.shape
    if len(cs) > 2 or (len(cs) >= 1 and cs[-1] not in (1, n)):
        return False
    if len(cs) == 2 and cs[0] != 1 and (m is None or cs[0] != m):
        return False
    out = add.outputs[0]
    res = Value(names.fresh(out.name))
    gemm = Node("Gemm", [a, b, c], [res], name=mm.name or add.name)
    g.insert(gemm, before=add)
    if not can_replace(out, res):  # pragma: no cover - a fresh node output can take any name
        g.remove_nodes([gemm])
        return False
    replace_value(out, res, names, keep_name=True)
    g.remove_nodes([add, mm])
    return True
