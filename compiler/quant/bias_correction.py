"""Empirical bias correction: fold the mean output error of quantized weights into the bias.

Quantizing a layer's weights W to Wq = dequantize(quantize(W)) shifts its output by
(Wq - W) x, whose mean over the data is not zero in general: with inputs that have a
nonzero mean per channel (every ReLU output does) the rounding errors of a channel's taps
add up to a systematic offset (Nagel et al., "Data-Free Quantization", 2019, section 4.2;
the empirical variant measures E[x] on calibration data instead of deriving it from
BatchNorm statistics). Adding -E[(Wq - W) x] to the bias removes it:

    E[layer_q(x)] = E[layer_float(x)]   after   b' = b + shift,  shift = -(Wq - W) E[x]

`bias_shift` computes `shift` per output channel from the per-input-channel mean
mu_c = E[x_c], summing over input channels and kernel taps:

  Conv      W [Cout, Cin/g, k..]: shift[o] = -sum_{j, taps} dW[o, j, taps] * mu[g(o) * Cin/g + j]
            with g(o) = o div (Cout/g) the group of output channel o (depthwise: Cin/g = 1).
  ConvTranspose W [Cin, Cout/g, k..]: output channel o = g * Cout/g + j collects
            sum_{i in group g, taps} dW[i, j, taps] * mu[i] from every input pixel, spread
            over prod(strides) output pixels per input pixel, so the mean per output pixel is
            that sum / prod(strides).
  Gemm      Y = alpha * A op(B) + beta * C, op(B) [K, N]: shift[n] = -alpha * sum_k dop(B)[k, n] mu[k]
            (the amount to add to beta * C; `apply_bias_shift` divides by beta).
  MatMul    A [..., K] @ B [K, N]: shift[n] = -sum_k dB[k, n] mu[k].

The mean being per channel assumes every tap sees the same spatial mean of its input
channel. Zero padding breaks that at the borders (a tap reading padding sees 0, not mu), as
do cropping pads and output_padding of ConvTranspose: there the correction is exact for the
interior and approximate overall, better the larger the feature map is relative to the
kernel.

Where to measure mu: Conv/ConvTranspose inputs have channels on axis 1, the mean is over
the batch and every spatial axis; MatMul/Gemm inputs have features on the last axis (K),
the mean is over all leading axes (for Gemm with transA = 1 the caller passes the mean per
row of A, which is then the K axis). `input_channel_mean` computes both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from homec import dtypes as D
from homec.ir import Graph, Node, Value
from homec.passes._util import (Names, add_constant, can_add_constant, const_of, is_const,
                                replace_value)
from homec.quant.equalize import replace_constant_input

SUPPORTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOATS = frozenset({D.FLOAT, D.FLOAT16, D.DOUBLE})


def input_channel_mean(op_type: str, x: np.ndarray) -> np.ndarray:
    """E[x] per input channel of a layer: axis 1 for Conv/ConvTranspose (mean over batch and
    spatial axes), the last axis for Gemm/MatMul (mean over all leading axes), in float64.

    Average the results of several calibration batches weighted by their element counts
    (or concatenate the batches first) to get the mean over a whole calibration set.
    """
    x = np.asarray(x, np.float64)
    if op_type in ("Conv", "ConvTranspose"):
        return x.mean(axis=tuple(a for a in range(x.ndim) if a != 1))
    if op_type in ("Gemm", "MatMul"):
        return x.reshape(-1, x.shape[-1]).mean(axis=0)
    raise ValueError(f"input_channel_mean: unsupported op type {op_type!r}")


def bias_shift(op_type: str, w_float: np.ndarray, w_dequant: np.ndarray,
               input_channel_mean: np.ndarray, *, group: int = 1, trans_b: bool = False,
               strides: Sequence[int] = (), alpha: float = 1.0) -> np.ndarray:
    """The amount to add to the layer's bias so that E[layer_q(x)] = E[layer_float(x)].

    `w_float` and `w_dequant` are the layer's weight before and after quantization (same
    shape, the op's own layout); `input_channel_mean` is E[x] per input channel (see
    `input_channel_mean`). `group` is Conv/ConvTranspose's group, `trans_b` Gemm's transB,
    `strides` ConvTranspose's strides (the error of one input pixel is spread over
    prod(strides) output pixels; ignored for other ops), `alpha` Gemm's alpha. Returns a
    float64 vector with one entry per output channel (for Gemm: to be added to beta * C).
    The algebra is in the module docstring. Raises ValueError on inconsistent shapes.
    """
    w = np.asarray(w_float, np.float64)
    wq = np.asarray(w_dequant, np.float64)
    if w.shape != wq.shape:
        raise ValueError(f"bias_shift: weight shapes differ: {w.shape} vs {wq.shape}")
    dw = wq - w
    mu = np.asarray(input_channel_mean, np.float64).reshape(-1)
    if op_type == "Conv":
        if dw.ndim < 3 or group < 1 or dw.shape[0] % group or mu.size != dw.shape[1] * group:
            raise ValueError(f"bias_shift: Conv weight {dw.shape} with group {group} does not "
                             f"read {mu.size} input channels")
        cout, cin_g = dw.shape[:2]
        tap_sums = dw.reshape(cout, cin_g, -1).sum(axis=2)  # [Cout, Cin/g]
        mu_seen = mu.reshape(group, cin_g)[np.arange(cout) // (cout // group)]  # [Cout, Cin/g]
        error = (tap_sums * mu_seen).sum(axis=1)
    elif op_type == "ConvTranspose":
        if dw.ndim < 3 or group < 1 or dw.shape[0] % group or mu.size != dw.shape[0]:
            raise ValueError(f"bias_shift: ConvTranspose weight {dw.shape} with group {group} "
                             f"does not read {mu.size} input channels")
        cin, cout_g = dw.shape[:2]
        tap_sums = dw.reshape(group, cin // group, cout_g, -1).sum(axis=3)  # [g, Cin/g, Cout/g]
        error = np.einsum("gic,gi->gc", tap_sums, mu.reshape(group, cin // group)).reshape(-1)
        error = error / math.prod(int(s) for s in strides) if strides else error
    elif op_type in ("Gemm", "MatMul"):
        if dw.ndim != 2:
            raise ValueError(f"bias_shift: {op_type} weight must be 2-D, got {dw.shape}")
        op_b = dw.T if op_type == "Gemm" and trans_b else dw  # [K, N]
        if mu.size != op_b.shape[0]:
            raise ValueError(f"bias_shift: {op_type} weight {dw.shape} does not read "
                             f"{mu.size} input features")
        error = mu @ op_b * (alpha if op_type == "Gemm" else 1.0)
    else:
        raise ValueError(f"bias_shift: unsupported op type {op_type!r} (one of {SUPPORTED_OPS})")
    return -error


def layer_bias_shift(node: Node, w_float: np.ndarray, w_dequant: np.ndarray,
                     input_channel_mean: np.ndarray) -> np.ndarray:
    """`bias_shift` with the op type and attributes (group, transB, strides, alpha) of `node`."""
    return bias_shift(node.op_type, w_float, w_dequant, input_channel_mean,
                      group=int(node.attr("group", 1)), trans_b=bool(node.attr("transB", 0)),
                      strides=tuple(node.attr("strides", ())), alpha=float(node.attr("alpha", 1.0)))


def apply_bias_shift(graph: Graph, node: Node, shift: np.ndarray) -> Value | None:
    """Add `shift` (one entry per output channel) to the float bias of `node` in `graph`.

    Conv / ConvTranspose: the bias (input 2) becomes b + shift; a layer without a bias gets
    one. Gemm: C becomes C + shift / beta, broadcast to [N] or [M, N] (a missing C is
    created; with beta = 0 the old C was ignored, so C = shift and beta = 1). MatMul has no
    bias input: when its output's only reader is an Add of a constant that broadcasts along
    the last axis, that constant takes the shift (the bias of a MatMul + Add layer);
    otherwise an Add of a new constant [N] is inserted after the MatMul (the MatMul's output
    name moves to the Add when it is a graph output), which the caller should know when it
    later pattern-matches the layer.

    Biases are replaced through Graph methods (never modified in place; a bias shared with
    another node is left to it). Returns the value now holding the bias, or None when
    nothing was changed: an unsupported op, a bias or Add operand that is not a float
    constant initializer, a weight whose dtype is not float (for a new bias), or a subgraph
    of an IR < 4 model (where no constant can be added).
    """
    if node.graph is not graph:
        raise ValueError(f"apply_bias_shift: {node!r} is not a node of {graph!r}")
    if node.op_type not in SUPPORTED_OPS or node.domain != "" or not can_add_constant(graph):
        return None
    shift = np.asarray(shift, np.float64).reshape(-1)
    if node.op_type == "MatMul":
        return _shift_matmul(node, shift)
    beta = float(node.attr("beta", 1.0)) if node.op_type == "Gemm" else 1.0
    if beta == 0.0:  # the old C did not count: it is replaced, and beta becomes 1
        new = _set_bias(node, 2, shift, replace=True)
        if new is not None:
            node.set_attr("beta", 1.0)
        return new
    return _set_bias(node, 2, shift / beta, replace=False)


def _weight_dtype(node: Node) -> np.dtype | None:
    """The float dtype of a new bias: the weight's (a constant, or a value of declared type,
    e.g. a DequantizeLinear output), else the layer output's declared type."""
    for v in (node.inputs[1] if len(node.inputs) > 1 else None, node.outputs[0]):
        if v is None:
            continue
        t = v.tensor_type()
        elem = v.const.dtype if is_const(v) else (t.elem_type if t else None)  # type: ignore[union-attr]
        if elem:
            return D.numpy_dtype_of(elem) if elem in _FLOATS else None
    return None


def _with_shift(b: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
    """b + shift along the last axis, or None when b does not broadcast per channel."""
    if b.ndim >= 1 and b.shape[-1] not in (1, shift.size):
        return None
    return b.astype(np.float64) + shift


def _set_bias(node: Node, slot: int, shift: np.ndarray, *, replace: bool) -> Value | None:
    g = node.graph
    assert g is not None
    old = node.inputs[slot] if len(node.inputs) > slot else None
    if old is None:
        dtype = _weight_dtype(node)
        if dtype is None:
            return None
        new = add_constant(g, g.fresh_name((node.name or node.op_type) + "_bias"), shift.astype(dtype))
        node.set_input(slot, new)
        return new
    b = const_of(old)
    if b is None or old.const.dtype not in _FLOATS:  # type: ignore[union-attr]
        return None
    if node.op_type == "Gemm" and b.ndim <= 2:
        full = np.broadcast_to(b, (shift.size,) if b.ndim <= 1 else (b.shape[0], shift.size))
        new_b = shift + (0.0 if replace else full.astype(np.float64))
    else:
        new_b = shift if replace else _with_shift(b, shift)
    if new_b is None or (node.op_type != "Gemm" and new_b.shape != b.shape):
        return None
    return replace_constant_input(node, slot, new_b)


def _shift_matmul(node: Node, shift: np.ndarray) -> Value | None:
    g = node.graph
    assert g is not None
    y = node.outputs[0]
    if y is None:
        return None
    readers = y.uses
    if len(readers) == 1 and not y.is_graph_output and readers[0][0].op_type == "Add" \
            and readers[0][0].domain == "" and len(readers[0][0].inputs) == 2:
        add, slot = readers[0]
        other = add.inputs[1 - slot]
        b = const_of(other)
        if b is not None and other.const.dtype in _FLOATS:  # type: ignore[union-attr]
            new_b = _with_shift(b, shift)
            if new_b is not None:
                return replace_constant_input(add, 1 - slot, new_b)
    dtype = _weight_dtype(node)
    if dtype is None:
        return None
    names = Names(g)
    bias = add_constant(g, names.fresh((node.name or "MatMul") + "_bias"), shift.astype(dtype))
    biased = Value(names.fresh(y.name + "_biased"), y.type)
    add = g.insert(Node("Add", [y, bias], [biased], name=names.fresh((node.name or "MatMul") + "_bias_add")),
                   after=node)
    # `biased` is a fresh node output of y's graph, so it can always take y's name
    replaced = replace_value(y, biased, names, keep_name=True)
    assert replaced
    add.set_input(0, y)  # replace_value also redirected the Add's own input
    return bias


__all__ = ["SUPPORTED_OPS", "apply_bias_shift", "bias_shift", "input_channel_mean", "layer_bias_shift"]
