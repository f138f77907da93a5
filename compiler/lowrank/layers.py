"""The layers low-rank factorization can rewrite, what each decomposition costs, and the
rewrite of a layer into its factors on the IR.

A *layer* is a node computing y = W x + b with a constant W (O, F):

* MatMul X·W (W (F, O) constant, right): rows of X over its last axis; emitted as
  MatMul(MatMul(X, Bᵀ), Aᵀ) for W' = A B (A (O, r), B (r, F)).
* MatMul W·X (W (O, F) constant, left): columns of X; emitted as MatMul(A, MatMul(B, X)).
* Gemm alpha·op(A)·op(B) + beta·C with a constant B: W = alpha·op(B)ᵀ; emitted as
  Gemm(Gemm(A, Bᵀ; transA), Aᵀ, C; beta).
* Conv with a constant kernel K (O, C/g, *k) and g groups, each group on its own: per
  group the matrix is K_j.reshape(O/g, C/g·prod(k)) over im2col patch features. The factors
  of all groups are concatenated and every emitted Conv keeps group = g. Depthwise convs
  (one input channel per group) have nothing to factorize and are skipped.

Costs are counted per layer from static shapes (the calibration sample's, when given): MACs
are multiply-accumulates of the layer and of its replacement; params the weights (biases
are the same on both sides and not counted). A decomposition is offered only where it is
cheaper in both.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from homec.ir import Graph, Node, Value

__all__ = ["Layer", "Plan", "find_layers", "costs", "full_ranks", "emit", "METHODS_FOR"]

CONV_METHODS = ("channel_svd", "spatial_svd", "tucker2")


@dataclasses.dataclass
class Layer:
    """One factorizable node and what the decompositions need to know about it."""

    index: int  # position of the node in graph.nodes when found (a copy of the graph has the
    # same node at the same position; names may be empty or repeated)
    node: Node
    kind: str  # "matmul_right" | "matmul_left" | "gemm" | "conv"
    weight: np.ndarray  # the constant as stored (float)
    out_features: int  # O
    in_features: int  # F per group (conv: C/g * prod(k))
    groups: int = 1
    kernel: tuple[int, ...] = ()  # conv kernel dims
    in_channels: int = 0  # conv: C (all groups)
    rows: int | None = None  # output positions (conv: N*prod(out spatial); matmul: rows)
    in_rows: int | None = None  # conv: N*prod(input spatial) (for factors at input resolution)
    mid_rows: int | None = None  # conv spatial_svd: N*H_out*W_in (the vertical factor's output)
    contraction_axis: int = -1  # matmul/gemm: the input axis the weight contracts

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def taps(self) -> int:
        return math.prod(self.kernel) if self.kernel else 1

    def matrices(self) -> list[np.ndarray]:
        """Per group, W_j (O/g, F) in float64: the layer is y_j = W_j x_j (+ b_j)."""
        w = self.weight.astype(np.float64)
        if self.kind == "conv":
            og = self.out_features // self.groups
            return [w[j * og:(j + 1) * og].reshape(og, -1) for j in range(self.groups)]
        if self.kind == "matmul_right":
            return [w.T]
        if self.kind == "matmul_left":
            return [w]
        node = self.node  # gemm
        mat = w if node.attr("transB", 0) else w.T
        return [mat * float(node.attr("alpha", 1.0))]

    def macs(self) -> int | None:
        if self.rows is None:
            return None
        return self.rows * self.out_features * self.in_features

    def params(self) -> int:
        return self.out_features * self.in_features


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one layer is factorized: the method and its ranks (per group)."""

    method: str  # "svd" (MatMul/Gemm) | "channel_svd" | "spatial_svd" | "tucker2"
    ranks: tuple[int, ...]


def methods_for(layer: Layer) -> tuple[str, ...]:
    if layer.kind != "conv":
        return ("svd",)
    out = ["channel_svd"]
    if len(layer.kernel) == 2 and min(layer.kernel) > 1:
        out.append("spatial_svd")
    if layer.taps > 1:
        out.append("tucker2")
    return tuple(out)


METHODS_FOR = methods_for


def full_ranks(layer: Layer, method: str) -> tuple[int, ...]:
    """The ranks at which `method` reproduces the layer exactly."""
    o = layer.out_features // layer.groups
    if method in ("svd", "channel_svd"):
        return (min(o, layer.in_features),)
    cg = layer.in_channels // layer.groups
    if method == "spatial_svd":
        kh, kw = layer.kernel
        return (min(cg * kh, o * kw),)
    if method == "tucker2":
        return (cg, o)
    raise ValueError(f"unknown method {method!r}")


@dataclasses.dataclass(frozen=True)
class Cost:
    macs: int | None
    params: int


def costs(layer: Layer, plan: Plan) -> Cost:
    """MACs and weight parameters of the factorized layer (all groups)."""
    g = layer.groups
    o = layer.out_features
    f = layer.in_features
    if plan.method == "svd":
        (r,) = plan.ranks
        params = r * (o + f)
        macs = None if layer.rows is None else layer.rows * params
        return Cost(macs, params)
    cg = layer.in_channels // g
    taps = layer.taps
    rows = layer.rows
    if plan.method == "channel_svd":
        (r,) = plan.ranks
        p1, p2 = g * r * cg * taps, o * r
        return Cost(None if rows is None else rows * (p1 + p2), p1 + p2)
    if plan.method == "spatial_svd":
        (r,) = plan.ranks
        kh, kw = layer.kernel
        p1, p2 = g * r * cg * kh, o * r * kw
        macs = None if rows is None or layer.mid_rows is None else layer.mid_rows * p1 + rows * p2
        return Cost(macs, p1 + p2)
    if plan.method == "tucker2":
        r1, r2 = plan.ranks
        p1, p2, p3 = g * r1 * cg, g * r2 * r1 * taps, o * r2
        macs = None
        if rows is not None and layer.in_rows is not None:
            macs = layer.in_rows * p1 + rows * (p2 + p3)
        return Cost(macs, p1 + p2 + p3)
    raise ValueError(f"unknown method {plan.method!r}")


def cheaper(layer: Layer, plan: Plan) -> bool:
    c = costs(layer, plan)
    m = layer.macs()
    return c.params < layer.params() and (m is None or c.macs is None or c.macs < m)


# ---------------------------------------------------------------------------------------
# Finding the layers
# ---------------------------------------------------------------------------------------


def _const(v: Value | None) -> np.ndarray | None:
    """The value's data when it is a constant: an initializer the caller may override (also
    a graph input, IR >= 4) is not one."""
    from homec.passes._util import is_const

    if v is None or not is_const(v):
        return None
    try:
        return v.const.numpy()
    except Exception:  # an undecodable constant (external data missing, odd dtype)
        return None


def _is_float(a: np.ndarray) -> bool:
    return a.dtype in (np.float16, np.float32, np.float64)


def find_layers(graph: Graph, types, selected) -> tuple[list[Layer], list[dict]]:
    """The factorizable layers of the top-level graph in graph order, and the skipped
    candidates ({node, op, reason}) — those a user might expect to be factorized."""
    layers: list[Layer] = []
    skipped: list[dict] = []
    for index, node in enumerate(graph.nodes):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        if not selected(node):
            continue
        layer, reason = _layer(index, node, types)
        if layer is not None:
            layers.append(layer)
        elif reason:
            skipped.append({"node": node.name, "op": node.op_type, "reason": reason})
    return layers, skipped


def _dims(types, v: Value | None) -> tuple[int | None, ...] | None:
    return types.dims(v) if v is not None else None


def _prod_static(dims) -> int | None:
    if dims is None or any(d is None for d in dims):
        return None
    return math.prod(int(d) for d in dims)


def _layer(index: int, node: Node, types) -> tuple[Layer | None, str | None]:
    ins = node.inputs
    weights = [v for v in ins[:2] if v is not None and _const(v) is not None]
    if any(len(v.uses) > 1 or v.is_graph_output for v in weights):
        # every reader would get its own factors: the model grows instead of shrinking
        return None, "weight shared with another node"
    if node.op_type == "Conv":
        k = _const(ins[1]) if len(ins) > 1 else None
        if k is None:
            return None, None  # a computed kernel: not a candidate
        if not _is_float(k) or k.ndim < 3:
            return None, f"kernel of dtype {k.dtype} / rank {k.ndim}"
        g = int(node.attr("group", 1))
        o, cg = int(k.shape[0]), int(k.shape[1])
        kernel = tuple(int(s) for s in k.shape[2:])
        if cg == 1 and g > 1:
            return None, "depthwise conv (one input channel per group)"
        if o % g:
            return None, f"{o} output channels do not split into {g} groups"
        x_dims = _dims(types, ins[0])
        y_dims = _dims(types, node.outputs[0])
        rows = _prod_static(None if y_dims is None else (y_dims[0],) + tuple(y_dims[2:]))
        in_rows = _prod_static(None if x_dims is None else (x_dims[0],) + tuple(x_dims[2:]))
        mid = None
        if len(kernel) == 2 and y_dims is not None and x_dims is not None and len(x_dims) == 4:
            mid = _prod_static((y_dims[0], y_dims[2], x_dims[3]))
        return Layer(index, node, "conv", k, o, cg * math.prod(kernel), g, kernel, cg * g, rows, in_rows,
                     mid), None
    if node.op_type == "MatMul":
        a, b = (_const(v) for v in ins[:2])
        if b is not None and a is None:
            if not _is_float(b) or b.ndim != 2:
                return None, f"constant weight of rank {b.ndim} (batched)" if b.ndim > 2 else None
            x = _dims(types, ins[0])
            rows = None if x is None or len(x) < 2 else _prod_static(x[:-1])
            return Layer(index, node, "matmul_right", b, int(b.shape[1]), int(b.shape[0]), rows=rows,
                         contraction_axis=-1), None
        if a is not None and b is None:
            if not _is_float(a) or a.ndim != 2:
                return None, f"constant weight of rank {a.ndim} (batched)" if a.ndim > 2 else None
            x = _dims(types, ins[1])
            rows = None if x is None or len(x) < 2 else _prod_static(x[:-2] + x[-1:])
            return Layer(index, node, "matmul_left", a, int(a.shape[0]), int(a.shape[1]), rows=rows,
                         contraction_axis=-2), None
        return None, None
    # Gemm
    a, b = (_const(v) for v in ins[:2])
    if b is None:
        return (None, "constant left operand of Gemm") if a is not None else (None, None)
    if a is not None or not _is_float(b) or b.ndim != 2:
        return None, None
    trans_a = int(node.attr("transA", 0))
    mat = b if node.attr("transB", 0) else b.T  # (O, F)
    x = _dims(types, ins[0])
    rows = None if x is None or len(x) != 2 else x[1 if trans_a else 0]
    return Layer(index, node, "gemm", b, int(mat.shape[0]), int(mat.shape[1]), rows=rows,
                 contraction_axis=0 if trans_a else 1), None


# ---------------------------------------------------------------------------------------
# Emitting the factors
# ---------------------------------------------------------------------------------------


def emit(graph: Graph, layer: Layer, plan: Plan, weights: list[tuple[np.ndarray, ...]],
         bias_delta: np.ndarray | None) -> list[Node]:
    """Replace `layer` by its factors. `weights[j]` are group j's factors in application
    order, in the (O, F)-matrix convention of homec.lowrank.factor (for MatMul/Gemm:
    (B (r, F), A (O, r))). `bias_delta` (O,) is added to the layer's bias (None: zero).
    Returns the new nodes; the layer's output keeps its name."""
    from homec.passes._util import Names, add_constant, is_const, opset, remove_constant, replace_value

    node = layer.node
    dtype = layer.weight.dtype
    names = Names(graph)
    base = node.name or node.op_type
    new_nodes: list[Node] = []

    def const(hint: str, data: np.ndarray) -> Value:
        return add_constant(graph, names.fresh(f"{base}_{hint}"), flush_subnormals(data.astype(dtype)))

    def add(op: str, inputs: list[Value | None], attrs: dict, suffix: str) -> Value:
        out = Value(names.fresh(f"{base}_{suffix}"))
        n = Node(op, inputs, [out], name=names.fresh(f"{base}_{suffix}"), attrs=attrs)
        graph.insert(n, before=node)
        new_nodes.append(n)
        return out

    delta = None if bias_delta is None or not np.any(bias_delta) else np.asarray(bias_delta, np.float64)
    old_inputs = [v for v in node.inputs if v is not None]
    if layer.kind == "conv":
        y = _emit_conv(layer, plan, weights, delta, add, const)
    elif layer.kind in ("matmul_right", "matmul_left"):
        ((b_f, a_f),) = weights
        x = node.inputs[0] if layer.kind == "matmul_right" else node.inputs[1]
        if layer.kind == "matmul_right":
            t = add("MatMul", [x, const("lr_b", b_f.T)], {}, "lr1")
            y = add("MatMul", [t, const("lr_a", a_f.T)], {}, "lr2")
        else:
            t = add("MatMul", [const("lr_b", b_f), x], {}, "lr1")
            y = add("MatMul", [const("lr_a", a_f), t], {}, "lr2")
        if delta is not None:
            shape = (-1,) if layer.kind == "matmul_right" else (-1, 1)
            bias_add = _bias_add_after(node, shape, layer.out_features)
            if bias_add is not None:  # fold the correction into the bias the model already adds
                add_node, slot = bias_add
                old_c = add_node.inputs[slot]
                folded = old_c.const.numpy().astype(np.float64) + delta.reshape(shape)
                ins = list(add_node.inputs)
                ins[slot] = const("lr_bias", folded)
                graph.set_inputs_of(add_node, ins)
                if is_const(old_c) and not old_c.uses and not old_c.is_graph_output and old_c.is_initializer:
                    remove_constant(old_c)
            else:
                y = add("Add", [y, const("lr_bias", delta.reshape(shape))], {}, "lr_bias")
    else:  # gemm
        ((b_f, a_f),) = weights
        trans_a = int(node.attr("transA", 0))
        first = [node.inputs[0], const("lr_b", b_f.T)]
        if opset(graph) < 11:  # C is optional only from opset 11: give the first factor a zero
            first.append(const("lr_zero", np.zeros(b_f.shape[0])))
        t = add("Gemm", first, {"transA": trans_a} if trans_a else {}, "lr1")
        c = node.inputs[2] if len(node.inputs) > 2 else None
        beta = float(node.attr("beta", 1.0))
        a_const = const("lr_a", a_f.T)
        if delta is None:  # C and beta as they were
            attrs = {"beta": beta} if c is not None and beta != 1.0 else {}
            y = add("Gemm", [t, a_const] + ([c] if c is not None else []), attrs, "lr2")
        elif c is None:
            y = add("Gemm", [t, a_const, const("lr_c", delta)], {}, "lr2")
        elif is_const(c):  # beta C + delta, broadcast to what C and [O] give
            folded = c.const.numpy().astype(np.float64) * beta + delta
            y = add("Gemm", [t, a_const, const("lr_c", folded)], {}, "lr2")
        else:  # a computed C: the correction goes in an Add after
            y0 = add("Gemm", [t, a_const, c], {"beta": beta} if beta != 1.0 else {}, "lr2")
            y = add("Add", [y0, const("lr_bias", delta)], {}, "lr_bias")
    old = node.outputs[0]
    y.type = old.type
    if not replace_value(old, y, names, keep_name=True):  # pragma: no cover - fresh values can
        raise RuntimeError(f"cannot replace the output of {node.name}")
    graph.remove_nodes([node])
    for v in old_inputs:
        if is_const(v) and not v.uses and not v.is_graph_output and v.graph is graph and v.is_initializer:
            remove_constant(v)
    return new_nodes


def flush_subnormals(data: np.ndarray) -> np.ndarray:
    """`data` with its subnormal values set to zero. A factorization's weakest directions
    can come out with entries below the format's smallest normal number; CPUs compute with
    subnormals up to ~100x slower, and a few in a weight make the whole layer crawl."""
    data = np.ascontiguousarray(data)
    if data.dtype.kind != "f" or data.dtype.itemsize < 2:
        return data
    tiny = np.finfo(data.dtype).tiny
    small = (data != 0) & (np.abs(data) < tiny)
    if small.any():
        data = data.copy()
        data[small] = 0
    return data


def _bias_add_after(node: Node, shape: tuple[int, ...], out: int) -> tuple[Node, int] | None:
    """The Add that is the MatMul's only reader and adds a constant bias of the layer's
    output shape (`shape`: [O] for X·W, [O, 1] for W·X, after numpy broadcasting), and the
    constant's slot; None when there is no such Add."""
    y = node.outputs[0]
    if y is None or y.is_graph_output or len(y.uses) != 1:
        return None
    add_node, slot = y.uses[0]
    if add_node.op_type != "Add" or add_node.domain not in ("", "ai.onnx") or len(add_node.inputs) != 2:
        return None
    from homec.passes._util import is_const

    other = add_node.inputs[1 - slot]
    if other is None or not is_const(other) or other is y or len(other.uses) != 1:
        return None
    c = other.const
    want = (out,) if shape == (-1,) else (out, 1)
    if tuple(c.shape) not in (want, (1,) + want) or c.numpy().dtype.kind != "f":
        return None
    return add_node, 1 - slot


def new_bias_elements(layer: Layer) -> int:
    """Constant elements `emit` adds for a bias correction where the layer has no bias of its
    own to fold it into (a Conv without bias, a Gemm without C or with a smaller C, a MatMul
    without a bias Add after it)."""
    from homec.passes._util import is_const

    node = layer.node
    o = layer.out_features

    def freed(v) -> int:  # elements of the old bias that go away with the node
        if v is None or not is_const(v) or v.is_graph_output or any(n is not node for n, _ in v.uses):
            return 0
        return int(np.prod(v.const.shape, dtype=np.int64))

    if layer.kind == "conv":
        b = node.inputs[2] if len(node.inputs) > 2 else None
        return o - freed(b) if b is not None and _const(b) is not None else o
    if layer.kind == "gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is None or not is_const(c):
            return o
        return int(np.prod(np.broadcast_shapes(tuple(c.const.shape), (o,)))) - freed(c)
    shape = (-1,) if layer.kind == "matmul_right" else (-1, 1)
    return 0 if _bias_add_after(node, shape, o) is not None else o


def _conv_attrs(node: Node) -> dict:
    """The Conv's geometry attributes as given (kernel_shape and group are set per factor)."""
    out = {}
    for name in ("auto_pad", "pads", "strides", "dilations"):
        v = node.attr(name)
        if v is not None:
            out[name] = v.decode() if isinstance(v, bytes) else v
    return out


def _split_2d(attrs: dict, axis: int) -> dict:
    """The geometry of the factor that convolves along spatial `axis` (0 = H, 1 = W) only:
    pads, strides and dilations of that axis, none on the other. SAME_*/VALID auto_pad
    passes through: ONNX computes it per axis, and a kernel of 1 with stride 1 pads nothing."""
    out: dict = {}
    if "auto_pad" in attrs and attrs["auto_pad"] not in ("NOTSET", ""):
        out["auto_pad"] = attrs["auto_pad"]
    elif "pads" in attrs:
        p = list(attrs["pads"])
        keep = [p[0], 0, p[2], 0] if axis == 0 else [0, p[1], 0, p[3]]
        if any(keep):
            out["pads"] = keep
    for name in ("strides", "dilations"):
        if name in attrs:
            v = list(attrs[name])
            one = [v[0], 1] if axis == 0 else [1, v[1]]
            if one != [1, 1]:
                out[name] = one
    return out


def _bias_input(bias_v, bias, const) -> list:
    """The last factor's bias: the corrected one, else the layer's own constant as it is."""
    if bias is not None:
        return [const("lr_bias", bias)]
    return [bias_v] if bias_v is not None else []


def _emit_conv(layer: Layer, plan: Plan, weights, delta, add, const) -> Value:
    node = layer.node
    g = layer.groups
    attrs = _conv_attrs(node)
    grp = {"group": g} if g > 1 else {}
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    bias = None
    late = None  # a correction for a bias that is computed or overridable: an Add after
    if delta is not None:
        if bias_v is not None and _const(bias_v) is None:
            late = delta
        else:
            bias = (bias_v.const.numpy().astype(np.float64) if bias_v is not None else 0.0) + delta
    y = _emit_conv_factors(layer, plan, weights, bias_v, bias, attrs, grp, add, const)
    if late is not None:
        y = add("Add", [y, const("lr_bias", late.reshape((-1,) + (1,) * len(layer.kernel)))], {}, "lr_bias")
    return y


def _emit_conv_factors(layer, plan, weights, bias_v, bias, attrs, grp, add, const) -> Value:
    node = layer.node
    g = layer.groups
    cg = layer.in_channels // g
    og = layer.out_features // g
    ones = (1,) * len(layer.kernel)

    def stacked(i: int, shape_of) -> np.ndarray:
        return np.concatenate([np.asarray(w[i]).reshape(shape_of(w[i])) for w in weights], axis=0)

    x = node.inputs[0]
    if plan.method == "channel_svd":
        (r,) = plan.ranks
        k1 = stacked(0, lambda m: (r, cg) + layer.kernel)
        k2 = stacked(1, lambda m: (og, r) + ones)
        t = add("Conv", [x, const("lr_k1", k1)], {**attrs, "kernel_shape": list(layer.kernel), **grp}, "lr1")
        ins = [t, const("lr_k2", k2)] + _bias_input(bias_v, bias, const)
        return add("Conv", ins, {"kernel_shape": list(ones), **grp}, "lr2")
    if plan.method == "spatial_svd":
        (r,) = plan.ranks
        kh, kw = layer.kernel
        k1 = stacked(0, lambda m: (r, cg, kh, 1))
        k2 = stacked(1, lambda m: (og, r, 1, kw))
        t = add("Conv", [x, const("lr_kv", k1)], {**_split_2d(attrs, 0), "kernel_shape": [kh, 1], **grp}, "lr1")
        ins = [t, const("lr_kh", k2)] + _bias_input(bias_v, bias, const)
        return add("Conv", ins, {**_split_2d(attrs, 1), "kernel_shape": [1, kw], **grp}, "lr2")
    if plan.method == "tucker2":
        r1, r2 = plan.ranks
        k1 = stacked(0, lambda m: (r1, cg) + ones)
        core = stacked(1, lambda m: (r2, r1) + layer.kernel)
        k3 = stacked(2, lambda m: (og, r2) + ones)
        t1 = add("Conv", [x, const("lr_kin", k1)], {"kernel_shape": list(ones), **grp}, "lr1")
        t2 = add("Conv", [t1, const("lr_core", core)], {**attrs, "kernel_shape": list(layer.kernel), **grp}, "lr2")
        ins = [t2, const("lr_kout", k3)] + _bias_input(bias_v, bias, const)
        return add("Conv", ins, {"kernel_shape": list(ones), **grp}, "lr3")
    raise ValueError(f"unknown conv method {plan.method!r}")
