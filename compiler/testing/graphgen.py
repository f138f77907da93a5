"""Seeded random ONNX models for differential and property tests, and big synthetic graphs.

`random_model(seed)` builds a small, valid ONNX model (onnx.checker full_check passes and
onnxruntime runs it) from the operators in `DEFAULT_OPS`. The generator tracks every
value's shape itself (an NCHW image path and a 2-D feature path after Flatten / Global
pooling / Squeeze, with 3-D and 5-D values in between after Reshape / Unsqueeze), so it
declares exact output types; the strict shape inference of `full_check` cross-checks that
bookkeeping.

What the models contain, on purpose (cleanup passes have something to find):

* realistic blocks: Conv (plain, grouped, depthwise; strides, dilations, symmetric,
  asymmetric and auto pads) and ConvTranspose with BatchNormalization and activations,
  residual blocks, squeeze-excitation blocks, Gemm/MatMul heads, pooling (ceil_mode only
  where runtimes agree, never a window lying wholly in the padding);
* broadcasting: per-channel constants [C,1,1] (stored as [C] behind Unsqueeze/Reshape
  sometimes), scalars (rank 0 and [1]), full-shape constants, [N,C,1,1] x [N,C,H,W], and
  constants larger than the activation (the result grows: x + 0 is then no identity);
* fan-out (a value read by several consumers, the same value twice by one node), Split
  outputs nobody reads, dead branches, intermediate values exposed as extra graph outputs,
  an Identity of a graph input, a Shape or a constant expression as a graph output;
* cleanup bait: Identity, inference-mode Dropout (sometimes with its mask output), Transpose
  pairs that cancel and identity permutations, no-op Reshape / Pad / Expand / Tile /
  Slice, Unsqueeze -> Squeeze pairs, Cast (to itself, lossless and lossy round trips,
  int chains), Reshape targets computed from Constant nodes, from Shape -> Gather ->
  Unsqueeze -> Concat or from Size, constants computed by Mul of two constants, weights
  computed by Transpose / Reshape of a constant or fake-quantized (Q -> DQ of a float
  constant, with half-way and saturating values), Constant nodes, exact duplicate nodes
  and near-duplicates that must stay apart (CSE), MatMul + Add (bias), Conv/Gemm +
  BatchNormalization, QuantizeLinear/DequantizeLinear pairs (per-tensor and per-channel)
  and int8 weights behind DequantizeLinear;
* If nodes on constant conditions whose branches capture outer values (one outer node may
  be read only inside a branch);
* initializers also listed as graph inputs (IR >= 4 defaults a caller may override: no
  pass may treat them as constants; see oracle.random_feeds(override_initializers=True));
* a symbolic batch dim ("N") in about a quarter of the models.

Weights are random but scaled from a running estimate of each value's RMS, so outputs stay
finite and activations are neither vanishing nor saturating. Only `np.random.RandomState`
(whose stream numpy keeps frozen) is used: the same seed gives the same bytes.

Every model records how it was made in `metadata_props` (`graphgen.seed`,
`graphgen.max_nodes`, `graphgen.opset`, `graphgen.version`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DEFAULT_OPS", "GENERATOR_VERSION", "models", "random_model", "seeds",
           "synthetic_chain", "synthetic_wide"]

GENERATOR_VERSION = "1"

F32 = TensorProto.FLOAT
F16 = TensorProto.FLOAT16
F64 = TensorProto.DOUBLE
I32 = TensorProto.INT32
I64 = TensorProto.INT64
U8 = TensorProto.UINT8
I8 = TensorProto.INT8
BOOL = TensorProto.BOOL

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

DEFAULT_OPS: tuple[str, ...] = (
    "Conv", "Gemm", "MatMul", "BatchNormalization",
    "Add", "Mul", "Sub",
    "Relu", "Clip", "HardSwish", "Sigmoid",
    "Concat", "Split", "Slice", "Reshape", "Transpose", "Flatten",
    "MaxPool", "AveragePool", "GlobalAveragePool",
    "QuantizeLinear", "DequantizeLinear",
    "Identity", "Dropout", "Constant",
    "Shape", "Gather", "Unsqueeze",
    # beyond the core list: what cleanup passes also rewrite
    "ConvTranspose", "Cast", "Pad", "Expand", "Tile", "Squeeze", "Size", "If",
)

# The IR version each default-domain opset first appeared with (what exporters write).
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}

Dim = int | str | None  # static size, symbolic name, or unknown
Shape = tuple[Dim, ...]


def _prod(dims: Iterable[Dim]) -> Dim:
    """Product of dims: an int when all are static, a lone symbol times ones, else None."""
    total = 1
    sym: list[Dim] = []
    for d in dims:
        if isinstance(d, int):
            total *= d
        else:
            sym.append(d)
    if not sym:
        return total
    if len(sym) == 1 and total == 1 and isinstance(sym[0], str):
        return sym[0]
    return None


def _static(dims: Iterable[Dim]) -> bool:
    return all(isinstance(d, int) for d in dims)


def _broadcast(a: Shape, b: Shape) -> Shape | None:
    """Numpy broadcast of two shapes, or None if they do not broadcast (or are unknown)."""
    r = max(len(a), len(b))
    a = (1,) * (r - len(a)) + tuple(a)
    b = (1,) * (r - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x is None or y is None:
            if x == 1 or y == 1:
                out.append(None)
                continue
            return None
        if x == y and x is not None:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            return None
    return tuple(out)


def _conv_out(size: int, k: int, s: int, d: int, pb: int, pe: int) -> int:
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


def _pool_out(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool) -> int | None:
    """Pool output size; None when ceil_mode is ambiguous (ONNX and runtimes differ on
    whether a last window starting in the padding counts), so the generator avoids it."""
    eff = d * (k - 1) + 1
    span = size + pb + pe - eff
    if span < 0:
        return None
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + pb:
        return None
    return out


def _windows_touch_input(size: int, out: int, k: int, s: int, d: int, pb: int) -> bool:
    """True if every pooling window has at least one tap inside the input (a window lying
    wholly in the padding gives -FLT_MAX for MaxPool and 0/0 for AveragePool)."""
    return all(any(0 <= o * s - pb + j * d < size for j in range(k)) for o in range(out))


def _value_info(name: str, elem: int, shape: Shape) -> onnx.ValueInfoProto:
    """A tensor value_info: int dims static, str dims symbolic, None dims unknown."""
    return helper.make_tensor_value_info(name, elem, list(shape))


class _Gen:
    """One random model under construction."""

    def __init__(self, seed: int, max_nodes: int, ops: Sequence[str], opset: int):
        unknown = sorted(set(ops) - set(DEFAULT_OPS))
        if unknown:
            raise ValueError(f"random_model: unsupported ops {unknown}; choose from DEFAULT_OPS")
        if opset not in _IR_FOR_OPSET:
            raise ValueError(f"random_model: opset {opset} not supported "
                             f"({min(_IR_FOR_OPSET)}..{max(_IR_FOR_OPSET)})")
        if max_nodes < 1:
            raise ValueError("random_model: max_nodes must be >= 1")
        self.seed = seed
        self.rng = np.random.RandomState(seed)
        self.ops = frozenset(ops) - (frozenset({"HardSwish"}) if opset < 14 else frozenset())
        self.opset = opset
        self.max_nodes = max_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.init_arrays: dict[str, np.ndarray] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.input_names: set[str] = set()
        self.shape: dict[str, Shape] = {}
        self.dtype: dict[str, int] = {}
        self.rms: dict[str, float] = {}
        self.pool: list[str] = []  # float activations, in creation order
        self.uses: Counter[str] = Counter()
        self.counter = 0
        self.reserve = 0  # structural nodes the running template still has to emit
        self.records: list[tuple[onnx.NodeProto, Shape, float]] = []  # clonable nodes
        self.forced_outputs: list[str] = []
        self.declare_info: list[str] = []

    # -- randomness -----------------------------------------------------------------------
    def p(self, prob: float) -> bool:
        return self.rng.random_sample() < prob

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randint(len(seq))]

    def has(self, *ops: str) -> bool:
        return all(o in self.ops for o in ops)

    def any_of(self, *ops: str) -> list[str]:
        return [o for o in ops if o in self.ops]

    def left(self) -> int:
        return self.max_nodes - len(self.nodes)

    def spare(self) -> int:
        """Nodes available for optional extras (Constant nodes, folded constants, DQ)."""
        return self.left() - self.reserve

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}{self.counter}"

    # -- building blocks ------------------------------------------------------------------
    def const(self, arr: np.ndarray, hint: str, *, node_ok: bool = True,
              fold_ok: bool = False) -> str:
        """A constant input: an initializer, a Constant node, or (fold bait) a Mul of two."""
        arr = np.asarray(arr)
        if (fold_ok and arr.dtype == np.float32 and self.has("Mul") and self.spare() >= 1
                and self.p(0.08)):
            self.reserve += 1  # the Mul
            b = self.rng.uniform(0.5, 2.0, arr.shape).astype(np.float32)
            a = (arr / b).astype(np.float32)
            an = self.const(a, hint + "_a")
            bn = self.const(b, hint + "_b")
            return self.emit("Mul", [an, bn], [arr.shape], pool=False)[0]
        if node_ok and self.has("Constant") and self.spare() >= 1 and self.p(0.2):
            name = self.fresh(hint + "_c")
            if arr.ndim == 0 and arr.dtype == np.float32 and self.p(0.5):
                attrs = {"value_float": float(arr)}
            elif arr.ndim == 1 and arr.dtype == np.int64 and self.p(0.5):
                attrs = {"value_ints": [int(v) for v in arr]}
            else:
                attrs = {"value": numpy_helper.from_array(arr, "")}
            self.nodes.append(helper.make_node("Constant", [], [name],
                                               name=self.fresh("Constant_"), **attrs))
            self.shape[name] = tuple(arr.shape)
            self.dtype[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
            return name
        name = self.fresh(hint + "_")
        self.inits.append(numpy_helper.from_array(arr, name))
        self.init_arrays[name] = arr
        self.shape[name] = tuple(arr.shape)
        self.dtype[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        return name

    def emit(self, op: str, inputs: Sequence[str], out_shapes: Sequence[Shape], *,
             dtypes: Sequence[int] | None = None, pool: bool = True,
             rms: float | Sequence[float] = 1.0, structural: bool = True,
             clonable: bool = False, **attrs: Any) -> list[str]:
        outs = [self.fresh("t") for _ in out_shapes]
        name = "" if self.p(0.03) else self.fresh(f"{op}_")
        node = helper.make_node(op, list(inputs), outs, name=name, **attrs)
        self.nodes.append(node)
        dtypes = list(dtypes) if dtypes is not None else [F32] * len(outs)
        rmss = [rms] * len(outs) if isinstance(rms, (int, float)) else list(rms)
        for o, s, dt, r in zip(outs, out_shapes, dtypes, rmss):
            self.shape[o] = tuple(s)
            self.dtype[o] = dt
            if dt == F32:
                self.rms[o] = float(min(max(r, 1e-3), 1e3))
                if pool:
                    self.pool.append(o)
        for i in inputs:
            if i:
                self.uses[i] += 1
        if structural and self.reserve > 0:
            self.reserve -= 1
        if clonable and len(outs) == 1:
            self.records.append((node, self.shape[outs[0]], self.rms[outs[0]]))
        if self.p(0.15):
            self.declare_info.extend(o for o in outs if None not in self.shape[o])
        return outs

    # -- choosing -------------------------------------------------------------------------
    def pick_source(self) -> str:
        if self.p(0.7) or len(self.pool) == 1:
            return self.pool[-1]
        if self.p(0.5):
            return self.pool[-1 - self.rng.randint(min(len(self.pool), 6))]
        return self.choice(self.pool)

    def partners(self, x: str, ok) -> list[str]:
        return [v for v in self.pool if v != x and ok(self.shape[v])]

    # -- weights --------------------------------------------------------------------------
    def weight(self, shape: Sequence[int], fan_in: int, in_rms: float, gain: float = 1.0) -> np.ndarray:
        w = self.rng.standard_normal(tuple(shape)) * (gain / math.sqrt(max(fan_in, 1)) / in_rms)
        return w.astype(np.float32)

    def weight_input(self, w: np.ndarray, hint: str, axis: int) -> str:
        """A weight initializer, sometimes stored int8 behind a DequantizeLinear, sometimes
        computed from constants (Transpose / Reshape of a constant, fake quantization)."""
        if self.spare() >= 2 and self.p(0.12):
            form = self.choice(["transpose", "reshape", "fakequant"])
            if form == "transpose" and self.has("Transpose") and w.ndim >= 2:
                perm = self.rng.permutation(w.ndim).tolist()
                if perm == list(range(w.ndim)):
                    perm = perm[::-1]
                inv = [0] * w.ndim
                for i, p_ in enumerate(perm):
                    inv[p_] = i
                stored = np.ascontiguousarray(np.transpose(w, perm))
                c = self.const(stored, hint + "_t", node_ok=self.p(0.3))
                return self.emit("Transpose", [c], [w.shape], pool=False, perm=inv)[0]
            if form == "reshape" and self.has("Reshape"):
                c = self.const(w.reshape(-1), hint + "_flat", node_ok=self.p(0.3))
                self.reserve += 1
                sh = self.const(np.asarray(w.shape, np.int64), hint + "_shape")
                return self.emit("Reshape", [c, sh], [w.shape], pool=False)[0]
            if form == "fakequant" and self.has("QuantizeLinear", "DequantizeLinear"):
                return self.fake_quant(w, hint)
        if self.has("DequantizeLinear") and self.spare() >= 1 and self.p(0.12):
            if self.p(0.6) and w.ndim >= 2:
                red = tuple(i for i in range(w.ndim) if i != axis)
                amax = np.abs(w).max(axis=red)
                scale = np.maximum(amax / 127.0, 1e-8).astype(np.float32)
                bshape = [1] * w.ndim
                bshape[axis] = -1
                q = np.clip(np.round(w / scale.reshape(bshape)), -127, 127).astype(np.int8)
                zp = np.zeros(scale.shape, np.int8)
                attrs = {"axis": axis if self.p(0.7) else axis - w.ndim}
            else:
                scale = np.float32(max(float(np.abs(w).max()) / 127.0, 1e-8))
                q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
                zp = np.int8(0)
                attrs = {}
            qn = self.const(q, hint + "_q", node_ok=False)
            sn = self.const(np.asarray(scale, np.float32), hint + "_scale", node_ok=False)
            ins = [qn, sn]
            if self.p(0.6):
                ins.append(self.const(np.asarray(zp), hint + "_zp", node_ok=False))
            return self.emit("DequantizeLinear", ins, [w.shape], pool=False,
                             structural=False, **attrs)[0]
        return self.const(w, hint, node_ok=self.p(0.3))

    def fake_quant(self, w: np.ndarray, hint: str) -> str:
        """QuantizeLinear -> DequantizeLinear of a float constant (a QAT export), with some
        values exactly half-way between steps and some beyond the int8 range."""
        self.reserve += 2
        scale = np.float32(max(float(np.abs(w).max()) / 100.0, 1e-6))
        w = w.copy()
        flat = w.reshape(-1)
        k = max(1, flat.size // 8)
        idx = self.rng.choice(flat.size, k, replace=False)
        flat[idx] = ((self.rng.randint(-20, 20, k) + 0.5) * scale).astype(np.float32)
        if flat.size > 4:
            flat[self.rng.randint(flat.size)] = scale * 140  # saturates
        zp = np.int8(self.rng.randint(-3, 4))
        sn = self.const(np.asarray(scale), hint + "_fq_scale", node_ok=False)
        zn = self.const(np.asarray(zp), hint + "_fq_zp", node_ok=False)
        c = self.const(w, hint + "_fq", node_ok=False)
        q = self.emit("QuantizeLinear", [c, sn, zn], [w.shape], dtypes=[I8], pool=False)[0]
        return self.emit("DequantizeLinear", [q, sn, zn], [w.shape], pool=False)[0]

    # =====================================================================================
    # Templates. Each takes the source value, adds nodes, and returns False if it could
    # not apply (nothing emitted then).
    # =====================================================================================

    def t_conv(self, x: str, *, cout: int | None = None, k: int | None = None,
               same: bool = False, group_mode: str | None = None) -> str | None:
        n, c, h, w = self.shape[x]
        assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
        mode = group_mode or self.choice(["regular", "regular", "depthwise", "grouped"])
        group = 1
        if mode == "depthwise" and c > 1:
            group = c
            cout = cout or c * self.choice([1, 1, 2])
            if cout % c:
                group = 1
        elif mode == "grouped":
            divs = [g for g in range(2, c) if c % g == 0]
            if divs:
                group = self.choice(divs)
                cout = cout or group * self.choice([1, 2, 3])
                if cout % group:
                    group = 1
        if cout is None:
            cout = self.choice([4, 6, 8, 12, 16, 24])
        if k is None:
            kh = self.choice([1, 3, 3, 5])
            kw = kh
            if self.p(0.15):
                kh, kw = self.choice([(1, 3), (3, 1), (3, 5)])
        else:
            kh = kw = k
        dil = 2 if (not same and max(kh, kw) > 1 and self.p(0.15)) else 1
        stride = (1, 1)
        if not same and self.p(0.35):
            stride = self.choice([(2, 2), (2, 2), (1, 2)])
        attrs: dict[str, Any] = {}
        pmode = "same" if same else self.choice(["same", "same", "zero", "asym", "auto"])
        if pmode == "auto" and dil == 1:
            ap = self.choice(["SAME_UPPER", "SAME_LOWER", "VALID"])
            attrs["auto_pad"] = ap
            if ap == "VALID":
                oh, ow = _conv_out(h, kh, stride[0], 1, 0, 0), _conv_out(w, kw, stride[1], 1, 0, 0)
            else:
                oh, ow = -(-h // stride[0]), -(-w // stride[1])
        else:
            if pmode == "asym":
                pads = [self.rng.randint(kh), self.rng.randint(kw), self.rng.randint(kh), self.rng.randint(kw)]
            elif pmode == "zero":
                pads = [0, 0, 0, 0]
            else:
                ph, pw = dil * (kh - 1) // 2, dil * (kw - 1) // 2
                pads = [ph, pw, ph, pw]
            oh = _conv_out(h, kh, stride[0], dil, pads[0], pads[2])
            ow = _conv_out(w, kw, stride[1], dil, pads[1], pads[3])
            if any(pads) or self.p(0.3):
                attrs["pads"] = pads
        if oh < 1 or ow < 1:
            kh = kw = 1
            dil = 1
            attrs = {}
            stride = (1, 1)
            oh, ow = h, w
        if stride != (1, 1) or self.p(0.3):
            attrs["strides"] = list(stride)
        if dil != 1 or self.p(0.2):
            attrs["dilations"] = [dil, dil]
        if group != 1 or self.p(0.2):
            attrs["group"] = group
        if self.p(0.9):
            attrs["kernel_shape"] = [kh, kw]
        fan_in = (c // group) * kh * kw
        wt = self.weight((cout, c // group, kh, kw), fan_in, self.rms[x])
        ins = [x, self.weight_input(wt, "conv_w", 0)]
        if self.p(0.7):
            ins.append(self.const((0.1 * self.rng.standard_normal(cout)).astype(np.float32),
                                  "conv_b", node_ok=self.p(0.3)))
        return self.emit("Conv", ins, [(n, cout, oh, ow)], rms=1.0, clonable=True, **attrs)[0]

    def t_bn(self, x: str) -> str:
        shape = self.shape[x]
        c = shape[1]
        assert isinstance(c, int)
        s = self.rms[x]
        gamma = (1.0 + 0.2 * self.rng.standard_normal(c)).astype(np.float32)
        beta = (0.2 * self.rng.standard_normal(c)).astype(np.float32)
        mean = (0.2 * s * self.rng.standard_normal(c)).astype(np.float32)
        var = (s * s * self.rng.uniform(0.5, 1.5, c)).astype(np.float32)
        attrs: dict[str, Any] = {}
        eps = self.choice([1e-5, 1e-5, 1e-3])
        if eps != 1e-5 or self.p(0.5):
            attrs["epsilon"] = eps
        if self.p(0.2):
            attrs["momentum"] = 0.9
        ins = [x] + [self.const(a, nm, node_ok=self.p(0.2), fold_ok=True)
                     for a, nm in ((gamma, "bn_scale"), (beta, "bn_bias"), (mean, "bn_mean"),
                                   (var, "bn_var"))]
        return self.emit("BatchNormalization", ins, [shape], rms=1.1, clonable=True, **attrs)[0]

    def t_unary(self, x: str, op: str | None = None) -> str:
        op = op or self.choice(self.any_of("Relu", "Relu", "Sigmoid", "HardSwish", "Clip"))
        s = self.rms[x]
        if op == "Relu":
            return self.emit("Relu", [x], [self.shape[x]], rms=s * 0.7, clonable=True)[0]
        if op == "Sigmoid":
            return self.emit("Sigmoid", [x], [self.shape[x]], rms=0.6, clonable=True)[0]
        if op == "HardSwish":
            return self.emit("HardSwish", [x], [self.shape[x]], rms=s * 0.7, clonable=True)[0]
        lo = 0.0 if self.p(0.5) else -s * self.rng.uniform(0.5, 2.0)
        hi = s * self.rng.uniform(1.0, 3.0)
        form = self.choice(["both", "both", "min", "max"])
        ins = [x]
        if form in ("both", "min"):
            ins.append(self.const(np.float32(lo), "clip_min"))
        else:
            ins.append("")
        if form in ("both", "max"):
            ins.append(self.const(np.float32(hi), "clip_max"))
        while ins[-1] == "":
            ins.pop()
        return self.emit("Clip", ins, [self.shape[x]], rms=min(s, hi), clonable=True)[0]

    def t_binary_const(self, x: str) -> str:
        op = self.choice(self.any_of("Add", "Mul", "Sub"))
        shape = self.shape[x]
        s = self.rms[x]
        forms = ["scalar0", "scalar1"]
        if len(shape) == 4 and isinstance(shape[1], int):
            forms += ["channel", "channel", "channel"]
        if isinstance(shape[-1], int):
            forms += ["last"]
        if _static(shape[1:]) and _prod(shape[1:]) <= 4096:  # type: ignore[operator]
            forms += ["full", "full1"]
        ones = [i for i in range(1, len(shape)) if shape[i] == 1]
        if ones:
            forms += ["expand"]
        if len(shape) == 2 and shape[0] == 1:
            forms += ["expand_batch"]
        form = self.choice(forms)
        if form == "scalar0":
            cshape: tuple[int, ...] = ()
        elif form == "scalar1":
            cshape = (1,)
        elif form == "channel":
            cshape = (shape[1], 1, 1)  # type: ignore[assignment]
        elif form == "last":
            cshape = (shape[-1],)  # type: ignore[assignment]
        elif form == "full":
            cshape = tuple(shape[1:])  # type: ignore[assignment]
        elif form == "expand":
            # a constant larger than x on x's size-1 axes: the result is bigger than x
            cshape = tuple(d if (i not in ones or not isinstance(d, int)) else self.choice([2, 3, 4])
                           for i, d in enumerate(shape))[1:]  # type: ignore[assignment]
            cshape = tuple(d if isinstance(d, int) else 1 for d in cshape)
        elif form == "expand_batch":
            cshape = (self.choice([2, 3]), shape[1])  # type: ignore[assignment]
            if not isinstance(shape[1], int):
                cshape = (2, 1)
        else:
            cshape = (1, *shape[1:])  # type: ignore[assignment]
        cshape = tuple(int(d) for d in cshape)  # type: ignore[arg-type]
        if op == "Mul":
            val = self.rng.uniform(0.5, 1.5, cshape) * (1 if self.p(0.8) else -1)
            out_rms = s * 1.0
            if self.p(0.05):
                val = np.ones(cshape)
        else:
            val = 0.3 * s * self.rng.standard_normal(cshape)
            out_rms = s * 1.05
            if self.p(0.05):
                val = np.zeros(cshape)
        val = np.asarray(val, np.float32)
        if form == "channel" and self.spare() >= 2 and self.p(0.2) and self.any_of("Unsqueeze", "Reshape"):
            # [C] stored, made [C, 1, 1] by Unsqueeze / Reshape (what exporters write)
            self.reserve += 1
            flat = self.const(val.reshape(-1), f"{op.lower()}_k", node_ok=self.p(0.3))
            if self.has("Unsqueeze") and (not self.has("Reshape") or self.p(0.5)):
                ax = self.const(np.asarray([1, 2] if self.p(0.7) else [-2, -1], np.int64), "uaxes")
                cn = self.emit("Unsqueeze", [flat, ax], [cshape], pool=False)[0]
            else:
                sh = self.const(np.asarray([-1, 1, 1], np.int64), "kshape")
                cn = self.emit("Reshape", [flat, sh], [cshape], pool=False)[0]
        else:
            cn = self.const(val, f"{op.lower()}_k", fold_ok=True)
        ins = [cn, x] if self.p(0.3) else [x, cn]
        out = _broadcast(shape, cshape)
        assert out is not None
        return self.emit(op, ins, [out], rms=out_rms, clonable=True)[0]

    def t_binary_act(self, x: str) -> str:
        op = self.choice(self.any_of("Add", "Add", "Mul", "Sub"))
        shape = self.shape[x]
        ps = self.partners(x, lambda s: len(s) == len(shape) and _broadcast(s, shape) is not None)
        y = self.choice(ps) if ps and not self.p(0.15) else x
        out = shape if y == x else _broadcast(self.shape[y], shape)
        assert out is not None
        a, b = self.rms[x], self.rms[y]
        rms = a * b if op == "Mul" else math.sqrt(a * a + b * b)
        ins = [x, y] if self.p(0.5) else [y, x]
        return self.emit(op, ins, [out], rms=rms, clonable=True)[0]

    def t_conv_bn_act(self, x: str) -> str:
        y = self.t_conv(x)
        assert y is not None
        y = self.t_bn(y)
        if self.any_of("Relu", "Clip", "HardSwish", "Sigmoid") and self.p(0.85):
            y = self.t_unary(y, self.choice(self.any_of("Relu", "Relu", "Relu", "Clip", "HardSwish")
                                            or self.any_of("Sigmoid")))
        return y

    def t_resblock(self, x: str) -> str:
        c = self.shape[x][1]
        k = self.choice([1, 3, 3])
        y = self.t_conv(x, cout=c, k=k, same=True, group_mode="regular")
        y = self.t_bn(y)
        y = self.t_unary(y, "Relu")
        y = self.t_conv(y, cout=c, k=k, same=True, group_mode=self.choice(["regular", "depthwise"]))
        y = self.t_bn(y)
        ins = [x, y] if self.p(0.6) else [y, x]
        z = self.emit("Add", ins, [self.shape[x]], rms=math.sqrt(self.rms[x] ** 2 + 1.2))[0]
        return self.t_unary(z, "Relu")

    def t_seblock(self, x: str) -> str:
        n, c, _, _ = self.shape[x]
        g = self.emit("GlobalAveragePool", [x], [(n, c, 1, 1)], rms=self.rms[x] * 0.5)[0]
        r = self.t_conv(g, cout=max(1, c // 2), k=1, same=True, group_mode="regular")
        r = self.t_unary(r, "Relu")
        r = self.t_conv(r, cout=c, k=1, same=True, group_mode="regular")
        r = self.t_unary(r, "Sigmoid")
        ins = [x, r] if self.p(0.7) else [r, x]
        return self.emit("Mul", ins, [self.shape[x]], rms=self.rms[x] * 0.6)[0]

    def t_concat(self, x: str) -> str | None:
        shape = self.shape[x]
        r = len(shape)
        axis = 1 if r != 3 else self.choice([1, 2])
        if not isinstance(shape[axis], int):
            return None

        def ok(s: Shape) -> bool:
            return (len(s) == r and isinstance(s[axis], int)
                    and all(a == b for i, (a, b) in enumerate(zip(s, shape)) if i != axis))

        ps = self.partners(x, ok)
        ins = [x]
        for _ in range(self.choice([1, 1, 2])):
            if ps and not self.p(0.15):
                ins.append(self.choice(ps))
            else:
                ins.append(x)
        if _static(shape) and self.p(0.1):
            cs = list(shape)
            cs[axis] = self.choice([1, 2])
            ins.append(self.const((0.5 * self.rng.standard_normal(cs)).astype(np.float32), "cat_k"))
        order = self.rng.permutation(len(ins))
        ins = [ins[i] for i in order]
        total = sum(self.shape[i][axis] for i in ins)  # type: ignore[misc]
        if total > 96:
            return None
        out = list(shape)
        out[axis] = total
        ax = axis - r if self.p(0.3) else axis
        rms = math.sqrt(sum(self.rms.get(i, 0.5) ** 2 for i in ins) / len(ins))
        return self.emit("Concat", ins, [tuple(out)], rms=rms, clonable=True, axis=ax)[0]

    def t_split(self, x: str) -> str | None:
        shape = self.shape[x]
        r = len(shape)
        axes = [1] + ([2, 3] if r == 4 else [])
        axis = self.choice(axes) if self.p(0.3) else 1
        d = shape[axis]
        if not isinstance(d, int) or d < 2:
            return None
        parts = self.choice([2, 2, 3]) if d >= 3 else 2
        ax = axis - r if self.p(0.2) else axis
        attrs: dict[str, Any] = {"axis": ax}
        if self.p(0.5) or d % parts:
            cuts = sorted(self.rng.choice(np.arange(1, d), parts - 1, replace=False).tolist())
            sizes = [b - a for a, b in zip([0, *cuts], [*cuts, d])]
            ins = [x, self.const(np.asarray(sizes, np.int64), "split")]
        else:
            sizes = [d // parts] * parts
            ins = [x]
            if self.opset >= 18:
                attrs["num_outputs"] = parts
        shapes = []
        for sz in sizes:
            s = list(shape)
            s[axis] = sz
            shapes.append(tuple(s))
        outs = self.emit("Split", ins, shapes, rms=self.rms[x], **attrs)
        # Make a random output the "current" value (the others may be read later or die).
        pick = outs[self.rng.randint(len(outs))]
        self.pool.remove(pick)
        self.pool.append(pick)
        return pick

    def t_slice(self, x: str) -> str | None:
        shape = self.shape[x]
        r = len(shape)
        cand = [i for i in range(1, r) if isinstance(shape[i], int) and shape[i] >= 2]
        if not cand:
            return None
        naxes = 1 if self.p(0.75) or len(cand) == 1 else 2
        axes = sorted(self.rng.choice(cand, naxes, replace=False).tolist())
        starts, ends, steps = [], [], []
        out = list(shape)
        for ax in axes:
            d = shape[ax]
            assert isinstance(d, int)
            for _ in range(20):
                step = self.choice([1, 1, 1, 2, -1])
                if step > 0:
                    st = self.choice([0, self.rng.randint(d), -self.rng.randint(1, d + 1)])
                    en = self.choice([INT64_MAX, d, self.rng.randint(1, d + 1), -self.rng.randint(1, d)])
                else:
                    st = self.choice([-1, d - 1, self.rng.randint(d), INT64_MAX])
                    en = self.choice([INT64_MIN, -d - 1, self.rng.randint(-1, d - 1)])
                n = len(range(*slice(st, en, step).indices(d)))
                if n >= 1:
                    break
            else:
                st, en, step, n = 0, d, 1, d
            starts.append(st)
            ends.append(en)
            steps.append(step)
            out[ax] = n
        if self.p(0.15) and max(axes) < r:
            # axes omitted: every axis from 0 up to the last sliced one is listed.
            full_s, full_e, full_st = [], [], []
            for i in range(max(axes) + 1):
                if i in axes:
                    j = axes.index(i)
                    full_s.append(starts[j])
                    full_e.append(ends[j])
                    full_st.append(steps[j])
                else:
                    full_s.append(0)
                    full_e.append(INT64_MAX)
                    full_st.append(1)
            ins = [x, self.const(np.asarray(full_s, np.int64), "sl_starts"),
                   self.const(np.asarray(full_e, np.int64), "sl_ends")]
            if any(s != 1 for s in full_st) or self.p(0.3):
                ins += ["", self.const(np.asarray(full_st, np.int64), "sl_steps")]
        else:
            spelled = [a - r if self.p(0.25) else a for a in axes]
            ins = [x, self.const(np.asarray(starts, np.int64), "sl_starts"),
                   self.const(np.asarray(ends, np.int64), "sl_ends"),
                   self.const(np.asarray(spelled, np.int64), "sl_axes")]
            if any(s != 1 for s in steps) or self.p(0.4):
                ins.append(self.const(np.asarray(steps, np.int64), "sl_steps"))
        return self.emit("Slice", ins, [tuple(out)], rms=self.rms[x], clonable=True)[0]

    def _reshape_targets(self, shape: Shape) -> list[tuple[int, ...]]:
        rest = shape[1:]
        if not _static(rest):
            return []
        total = _prod(rest)
        assert isinstance(total, int)
        r = len(shape)
        outs: list[tuple[int, ...]] = []
        if r >= 3:
            outs.append((total,))
        if r == 4:
            c, h, w = rest  # type: ignore[misc]
            outs.append((c, h * w))  # type: ignore[operator]
            outs.append((c * h, w))  # type: ignore[operator]
            for k in (2, 3, 4):
                if c % k == 0:  # type: ignore[operator]
                    outs.append((c // k, k * h, w))  # type: ignore[operator]
            if h != w:
                outs.append((c, w, h))
        if r == 2:
            for k in (2, 4, 8):
                if total % k == 0 and total // k >= 1:
                    outs.append((total // k, k))
            for c in (1, 2, 4, 8, 16):
                if total % c == 0:
                    hw = total // c
                    for h in (2, 3, 4, 5, 6, 8):
                        if hw % h == 0 and hw // h >= 2:
                            outs.append((c, h, hw // h))
        if r == 3:
            s, f = rest  # type: ignore[misc]
            for k in (2, 3, 4):
                if f % k == 0:  # type: ignore[operator]
                    outs.append((s, f // k, k))  # type: ignore[operator]
        if self.p(0.15) or not outs:
            outs.append(tuple(rest))  # a no-op reshape
        return outs

    def t_reshape(self, x: str) -> str | None:
        shape = self.shape[x]
        targets = self._reshape_targets(shape)
        if not targets:
            return None
        rest = self.choice(targets)
        batch = shape[0]
        dynamic = (self.has("Shape", "Gather", "Unsqueeze", "Concat") and self.spare() >= 4
                   and self.p(0.2))
        if dynamic:
            self.reserve += 4
            spec_rest = list(rest)
            if self.p(0.5):
                spec_rest = [-1] if len(rest) == 1 else spec_rest
            shape_in = self._dynamic_shape(x, spec_rest)
        else:
            first: int = 0
            if isinstance(batch, int) and self.p(0.3):
                first = batch
            elif self.p(0.2):
                first = -1
            spec = [first, *rest]
            if first != -1 and self.p(0.3):
                spec[1 + self.rng.randint(len(rest))] = -1
            arr = np.asarray(spec, np.int64)
            if self.has("Concat", "Constant") and self.spare() >= 3 and len(spec) >= 2 and self.p(0.15):
                self.reserve += 3
                cut = 1 + self.rng.randint(len(spec) - 1)
                a = self._const_node(arr[:cut])
                b = self._const_node(arr[cut:])
                shape_in = self.emit("Concat", [a, b], [(len(spec),)], dtypes=[I64], pool=False,
                                     axis=0)[0]
            else:
                shape_in = self.const(arr, "shape")
        attrs = {}
        if self.opset >= 14 and self.p(0.1):
            attrs["allowzero"] = 0
        return self.emit("Reshape", [x, shape_in], [(batch, *rest)], rms=self.rms[x],
                         clonable=True, **attrs)[0]

    def _const_node(self, arr: np.ndarray) -> str:
        name = self.fresh("k")
        self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_"),
                                           value=numpy_helper.from_array(arr, "")))
        self.reserve = max(0, self.reserve - 1)
        self.shape[name] = tuple(arr.shape)
        self.dtype[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        return name

    def _dynamic_shape(self, x: str, rest: list[int]) -> str:
        """Shape(x)[0] concatenated with `rest`: the batch dim taken from the tensor."""
        r = len(self.shape[x])
        if self.opset >= 15 and self.p(0.3):
            s = self.emit("Shape", [x], [(1,)], dtypes=[I64], pool=False,
                          start=0, end=1)[0]
            n1 = s
        else:
            s = self.emit("Shape", [x], [(r,)], dtypes=[I64], pool=False)[0]
            if self.p(0.3):
                idx = self.const(np.asarray([0], np.int64), "gidx")
                n1 = self.emit("Gather", [s, idx], [(1,)], dtypes=[I64], pool=False, axis=0)[0]
            else:
                idx = self.const(np.asarray(0, np.int64), "gidx")
                n0 = self.emit("Gather", [s, idx], [()], dtypes=[I64], pool=False, axis=0)[0]
                axes = self.const(np.asarray([0], np.int64), "uaxes")
                n1 = self.emit("Unsqueeze", [n0, axes], [(1,)], dtypes=[I64], pool=False)[0]
        tail = self.const(np.asarray(rest, np.int64), "shape_tail")
        return self.emit("Concat", [n1, tail], [(1 + len(rest),)], dtypes=[I64], pool=False,
                         axis=0)[0]

    def t_shape_reshape(self, x: str) -> str | None:
        """Flatten via a computed shape: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
        shape = self.shape[x]
        if not _static(shape[1:]):
            return None
        total = _prod(shape[1:])
        spec = [-1] if self.p(0.5) else [int(total)]  # type: ignore[arg-type]
        shape_in = self._dynamic_shape(x, spec)
        return self.emit("Reshape", [x, shape_in], [(shape[0], total)], rms=self.rms[x])[0]

    def t_transpose(self, x: str) -> str:
        shape = self.shape[x]
        r = len(shape)
        if self.p(0.1):
            perm = list(range(r))
        elif r == 4 and self.p(0.5):
            perm = self.choice([[0, 2, 3, 1], [0, 1, 3, 2], [0, 3, 1, 2]])
        else:
            perm = [0] + (1 + self.rng.permutation(r - 1)).tolist() if self.p(0.8) else \
                self.rng.permutation(r).tolist()
        attrs: dict[str, Any] = {"perm": perm}
        if perm == list(range(r))[::-1] and self.p(0.5):
            attrs = {}
        out = tuple(shape[i] for i in perm)
        y = self.emit("Transpose", [x], [out], rms=self.rms[x], clonable=True, **attrs)[0]
        if self.spare() >= 1 and self.p(0.35):
            inv = [0] * r
            for i, p_ in enumerate(perm):
                inv[p_] = i
            y = self.emit("Transpose", [y], [shape], rms=self.rms[x], structural=False, perm=inv)[0]
        return y

    def t_flatten(self, x: str) -> str | None:
        shape = self.shape[x]
        r = len(shape)
        axis = 1 if self.p(0.75) else self.rng.randint(0, r + 1)
        a, b = _prod(shape[:axis]), _prod(shape[axis:])
        if not isinstance(b, int) or b > 4096:
            return None
        attrs = {} if axis == 1 and self.p(0.3) else {"axis": axis - r if (0 < axis < r and self.p(0.3)) else axis}
        return self.emit("Flatten", [x], [(a, b)], rms=self.rms[x], clonable=True, **attrs)[0]

    def t_pool(self, x: str, op: str) -> str | None:
        n, c, h, w = self.shape[x]
        assert isinstance(h, int) and isinstance(w, int)
        for _ in range(8):
            kh = self.choice([2, 3, 3])
            kw = kh if self.p(0.8) else self.choice([1, 2, 3])
            s = self.choice([1, 2, 2])
            sw = s if self.p(0.85) else self.choice([1, 2])
            dil = 2 if op == "MaxPool" and self.p(0.1) else 1
            pmode = self.choice(["zero", "zero", "sym", "asym"])
            if pmode == "zero":
                pads = [0, 0, 0, 0]
            elif pmode == "sym":
                pads = [(kh - 1) // 2, (kw - 1) // 2, (kh - 1) // 2, (kw - 1) // 2]
            else:
                pads = [self.rng.randint(kh), self.rng.randint(kw), self.rng.randint(kh), self.rng.randint(kw)]
            ceil = self.p(0.15)
            oh = _pool_out(h, kh, s, dil, pads[0], pads[2], ceil)
            ow = _pool_out(w, kw, sw, dil, pads[1], pads[3], ceil)
            if (oh and ow and oh >= 1 and ow >= 1
                    and _windows_touch_input(h, oh, kh, s, dil, pads[0])
                    and _windows_touch_input(w, ow, kw, sw, dil, pads[1])):
                break
        else:
            return None
        attrs: dict[str, Any] = {"kernel_shape": [kh, kw]}
        if (s, sw) != (1, 1) or self.p(0.3):
            attrs["strides"] = [s, sw]
        if any(pads) or self.p(0.2):
            attrs["pads"] = pads
        if ceil:
            attrs["ceil_mode"] = 1
        if dil != 1:
            attrs["dilations"] = [dil, dil]
        if op == "AveragePool" and (any(pads) and self.p(0.5)):
            attrs["count_include_pad"] = 1
        return self.emit(op, [x], [(n, c, oh, ow)], rms=self.rms[x], clonable=True, **attrs)[0]

    def t_gap(self, x: str) -> str:
        n, c, _, _ = self.shape[x]
        return self.emit("GlobalAveragePool", [x], [(n, c, 1, 1)], rms=self.rms[x] * 0.5,
                         clonable=True)[0]

    def t_qdq(self, x: str) -> str:
        shape = self.shape[x]
        r = len(shape)
        s = self.rms[x]
        per_channel = r >= 2 and isinstance(shape[1], int) and self.p(0.35)
        unsigned = self.p(0.5)
        attrs: dict[str, Any] = {}
        if per_channel:
            c = shape[1]
            assert isinstance(c, int)
            scale = (4.0 * s / 127.0 * self.rng.uniform(0.8, 1.2, c)).astype(np.float32)
            zp = (128 + self.rng.randint(-8, 9, c)).astype(np.uint8) if unsigned else \
                self.rng.randint(-4, 5, c).astype(np.int8)
            attrs["axis"] = 1 if self.p(0.7) else 1 - r
        else:
            scale = np.float32(4.0 * s / 127.0 * self.rng.uniform(0.8, 1.2))
            zp = np.uint8(128 + self.rng.randint(-8, 9)) if unsigned else np.int8(self.rng.randint(-4, 5))
            if self.p(0.2):
                scale = scale.reshape(1)
                zp = zp.reshape(1)
        zp = np.asarray(zp)
        scale = np.asarray(scale)
        omit_zp = unsigned and not per_channel and self.p(0.15)
        sn = self.const(scale, "q_scale", node_ok=self.p(0.3))
        qins = [x, sn] if omit_zp else [x, sn, self.const(zp, "q_zp", node_ok=self.p(0.3))]
        qdt = U8 if unsigned else I8
        q = self.emit("QuantizeLinear", qins, [shape], dtypes=[qdt], pool=False, **attrs)[0]
        if self.p(0.7):
            dins = [q, *qins[1:]]
        else:
            dins = [q, self.const(scale.copy(), "dq_scale", node_ok=False)]
            if not omit_zp:
                dins.append(self.const(zp.copy(), "dq_zp", node_ok=False))
        if self.p(0.04):
            self.forced_outputs.append(q)
        return self.emit("DequantizeLinear", dins, [shape], rms=s, **attrs)[0]

    def t_identity(self, x: str) -> str:
        return self.emit("Identity", [x], [self.shape[x]], rms=self.rms[x])[0]

    def t_dropout(self, x: str) -> str:
        ins = [x]
        form = self.choice(["plain", "ratio", "ratio_mode", "mode"])
        if form in ("ratio", "ratio_mode"):
            ins.append(self.const(np.float32(self.choice([0.1, 0.5])), "ratio"))
        if form in ("ratio_mode", "mode") and self.opset >= 12:
            if len(ins) == 1:
                ins.append("")
            ins.append(self.const(np.asarray(False), "training_mode"))
        shapes = [self.shape[x]]
        dts = [F32]
        if self.p(0.2):
            shapes.append(self.shape[x])
            dts.append(BOOL)
        outs = self.emit("Dropout", ins, shapes, dtypes=dts, rms=self.rms[x])
        if len(outs) == 2 and self.p(0.5):
            self.forced_outputs.append(outs[1])
        return outs[0]

    def t_gemm(self, x: str) -> str | None:
        b, f = self.shape[x]
        if not isinstance(f, int) or f > 4096:
            return None
        k = self.choice([4, 8, 10, 16, 32])
        attrs: dict[str, Any] = {}
        alpha = 1.0
        if self.p(0.2):
            alpha = float(np.float32(self.rng.uniform(0.5, 1.5)))
            attrs["alpha"] = alpha
        trans_b = self.p(0.6)
        if trans_b:
            attrs["transB"] = 1
        elif self.p(0.2):
            attrs["transB"] = 0
        wt = self.weight((f, k), f, self.rms[x], 1.0 / alpha)
        if trans_b:
            wt = np.ascontiguousarray(wt.T)
        ins = [x, self.weight_input(wt, "gemm_w", 0 if trans_b else 1)]
        form = self.choice(["none", "k", "k", "1k", "scalar"])
        if form != "none":
            cshape = {"k": (k,), "1k": (1, k), "scalar": ()}[form]
            ins.append(self.const((0.1 * self.rng.standard_normal(cshape)).astype(np.float32),
                                  "gemm_c", node_ok=self.p(0.3), fold_ok=True))
            if self.p(0.2):
                attrs["beta"] = float(np.float32(self.rng.uniform(0.5, 1.5)))
        return self.emit("Gemm", ins, [(b, k)], rms=1.0, clonable=True, **attrs)[0]

    def t_matmul(self, x: str) -> str | None:
        shape = self.shape[x]
        f = shape[-1]
        if not isinstance(f, int) or f > 4096:
            return None
        k = self.choice([4, 8, 12, 16])
        wt = self.weight((f, k), f, self.rms[x])
        w = self.weight_input(wt, "mm_w", 1)
        out = (*shape[:-1], k)
        y = self.emit("MatMul", [x, w], [out], rms=1.0, clonable=True)[0]
        if self.has("Add") and self.spare() >= 1 and self.p(0.6):
            self.reserve += 1  # the Add
            bshape = (k,) if len(shape) != 2 or self.p(0.8) else (1, k)
            bias = self.const((0.1 * self.rng.standard_normal(bshape)).astype(np.float32),
                              "mm_b", node_ok=self.p(0.3))
            ins = [y, bias] if self.p(0.7) else [bias, y]
            y = self.emit("Add", ins, [out], rms=1.0)[0]
        return y

    def t_if(self, x: str) -> str:
        """If on a constant condition; the branches read outer values (captures), may pass an
        outer value through an Identity, and an outer node may be read only inside them."""
        shape = self.shape[x]
        s = self.rms[x]
        inner_only = None
        if self.has("Relu") and self.spare() >= 1 and self.p(0.4):
            self.reserve += 1
            inner_only = self.emit("Relu", [x], [shape], pool=False, rms=s * 0.7)[0]
        cond = self.const(np.asarray(self.p(0.5)), "cond")
        unary = self.any_of("Relu", "Sigmoid", "HardSwish") or ["Identity"]

        def branch(tag: str) -> onnx.GraphProto:
            nodes: list[onnx.NodeProto] = []
            inits: list[onnx.TensorProto] = []
            form = self.choice(["unary", "unary", "affine", "outer", "identity", "inner_only"])
            src = x
            if form == "outer":
                # (a branch output must be produced inside it: the checker refuses a bare
                # outer value, so the outer value goes through an Identity)
                src = inner_only if inner_only and self.p(0.5) else x
                form = "identity"
            out = self.fresh("b")
            if form == "unary":
                nodes.append(helper.make_node(self.choice(unary), [x], [out], name=self.fresh(tag + "_op")))
            elif form == "identity":
                nodes.append(helper.make_node("Identity", [src], [out], name=self.fresh(tag + "_id")))
            elif form == "inner_only" and inner_only is not None:
                nodes.append(helper.make_node("Add", [x, inner_only], [out], name=self.fresh(tag + "_add")))
            else:
                k = self.fresh("bk")
                val = np.asarray(self.rng.uniform(0.5, 1.5), np.float32)
                if self.p(0.5):
                    nodes.append(helper.make_node("Constant", [], [k], name=self.fresh(tag + "_c"),
                                                  value=numpy_helper.from_array(val, "")))
                else:
                    inits.append(numpy_helper.from_array(val, k))
                mid = self.fresh("b")
                nodes.append(helper.make_node("Mul", [x, k], [mid], name=self.fresh(tag + "_mul")))
                nodes.append(helper.make_node("Identity", [mid], [out], name=self.fresh(tag + "_id")))
            return helper.make_graph(nodes, self.fresh(tag), [], [_value_info(out, F32, shape)],
                                     initializer=inits)

        return self.emit("If", [cond], [shape], rms=s, then_branch=branch("then"),
                         else_branch=branch("else"))[0]

    def t_dead(self, x: str) -> str | None:
        op = self.choice(self.any_of("Relu", "Sigmoid", "HardSwish"))
        y = self.emit(op, [x], [self.shape[x]], pool=False, rms=self.rms[x])[0]
        if self.spare() >= 1 and self.p(0.4) and self.has("Relu"):
            self.emit("Relu", [y], [self.shape[x]], pool=False, rms=self.rms[x], structural=False)
        return None  # leaves the current value unchanged

    def t_clone(self, x: str) -> str | None:
        node, shape, rms = self.choice(self.records[-8:])
        ins = []
        for i in node.input:
            if i in self.init_arrays and self.p(0.4):
                ins.append(self.const(self.init_arrays[i].copy(), "dup", node_ok=False))
            else:
                ins.append(i)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        y = self.emit(node.op_type, ins, [shape], rms=rms, **attrs)[0]
        if self.has("Add") and self.spare() >= 1 and self.p(0.5):
            orig = node.output[0]
            y = self.emit("Add", [orig, y] if self.p(0.5) else [y, orig], [shape], rms=rms * 1.4,
                          structural=False)[0]
        return y


    def t_convtranspose(self, x: str) -> str | None:
        n, c, h, w = self.shape[x]
        assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
        group = 1
        if c > 1 and self.p(0.3):
            divs = [g for g in range(2, c + 1) if c % g == 0]
            group = self.choice(divs)
        cout = group * self.choice([1, 2, 4]) if group > 1 else self.choice([4, 8, 12])
        k = self.choice([1, 2, 3, 4])
        st = self.choice([1, 2, 2])
        dil = 2 if k > 1 and self.p(0.1) else 1
        pad = self.rng.randint(0, max(1, (dil * (k - 1) + 1) // 2 + 1))
        opad = self.rng.randint(0, st) if st > 1 and self.p(0.3) else 0
        if opad >= st and opad >= dil:
            opad = 0
        oh = (h - 1) * st - 2 * pad + dil * (k - 1) + 1 + opad
        ow = (w - 1) * st - 2 * pad + dil * (k - 1) + 1 + opad
        if oh < 1 or ow < 1 or oh > 48 or ow > 48:
            return None
        attrs: dict[str, Any] = {"kernel_shape": [k, k]}
        if st != 1 or self.p(0.3):
            attrs["strides"] = [st, st]
        if pad or self.p(0.3):
            attrs["pads"] = [pad, pad, pad, pad]
        if opad:
            attrs["output_padding"] = [opad, opad]
        if dil != 1:
            attrs["dilations"] = [dil, dil]
        if group != 1 or self.p(0.2):
            attrs["group"] = group
        fan = (c // group) * k * k // max(1, st * st)
        wt = self.weight((c, cout // group, k, k), max(fan, 1), self.rms[x])
        ins = [x, self.weight_input(wt, "convt_w", 1 if group == 1 else 0)]
        if self.p(0.6):
            ins.append(self.const((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "convt_b"))
        return self.emit("ConvTranspose", ins, [(n, cout, oh, ow)], rms=1.0, clonable=True, **attrs)[0]

    def t_cast(self, x: str) -> str:
        shape = self.shape[x]
        s = self.rms[x]
        form = self.choice(["same", "f64", "f16", "int", "int_chain"])
        if self.spare() < {"same": 0, "f64": 1, "f16": 1, "int": 1, "int_chain": 2}[form]:
            form = "same"
        if form == "same":
            return self.emit("Cast", [x], [shape], rms=s, clonable=True, to=F32)[0]
        if form in ("f64", "f16"):
            self.reserve += 1
            mid = F64 if form == "f64" else F16
            y = self.emit("Cast", [x], [shape], dtypes=[mid], pool=False, to=mid)[0]
            return self.emit("Cast", [y], [shape], rms=s, to=F32)[0]
        # float -> int32 (truncation) [-> int64] -> float: never the identity
        self.reserve += 2 if form == "int_chain" else 1
        y = self.emit("Cast", [x], [shape], dtypes=[I32], pool=False, to=I32)[0]
        if form == "int_chain":
            y = self.emit("Cast", [y], [shape], dtypes=[I64], pool=False, to=I64)[0]
        return self.emit("Cast", [y], [shape], rms=s, to=F32)[0]

    def t_pad(self, x: str) -> str | None:
        shape = self.shape[x]
        r = len(shape)
        axes = [i for i in range(1, r) if isinstance(shape[i], int)]
        if not axes:
            return None
        mode = self.choice(["constant", "constant", "constant", "reflect", "edge"])
        pads = [0] * (2 * r)
        if not self.p(0.2):  # else all zero: the identity
            for i in axes:
                d = shape[i]
                assert isinstance(d, int)
                if r == 4 and i == 1 and self.p(0.7):
                    continue
                lim = d - 1 if mode == "reflect" else 2
                lo, hi = self.rng.randint(0, lim + 1), self.rng.randint(0, lim + 1)
                if mode == "constant" and d > 2 and self.p(0.15):
                    lo = -1  # negative pads crop
                pads[i], pads[r + i] = min(lo, 2), min(hi, 2)
        out = list(shape)
        for i in axes:
            out[i] = shape[i] + pads[i] + pads[r + i]  # type: ignore[operator]
            if out[i] < 1:
                return None
        ins = [x, self.const(np.asarray(pads, np.int64), "pads")]
        attrs: dict[str, Any] = {}
        if mode != "constant" or self.p(0.3):
            attrs["mode"] = mode
        if mode == "constant" and self.p(0.4):
            ins.append(self.const(np.float32(self.choice([0.0, 0.5, -1.0])), "pad_value"))
        return self.emit("Pad", ins, [tuple(out)], rms=self.rms[x], clonable=True, **attrs)[0]

    def t_expand(self, x: str) -> str | None:
        shape = self.shape[x]
        r = len(shape)
        target: list[int] = []
        for i, d in enumerate(shape):
            if d == 1 and i > 0 and self.p(0.6):
                target.append(self.choice([2, 3, 4]))
            elif isinstance(d, int) and self.p(0.5):
                target.append(d)
            else:
                target.append(1)
        if self.p(0.2):
            target = target[1 + self.rng.randint(r - 1):] if r > 1 else target
        out = _broadcast(shape, tuple(target))
        if out is None:
            return None
        sh = self.const(np.asarray(target, np.int64), "expand_shape")
        return self.emit("Expand", [x, sh], [out], rms=self.rms[x], clonable=True)[0]

    def t_tile(self, x: str) -> str | None:
        shape = self.shape[x]
        reps = [1] * len(shape)
        if not self.p(0.3):  # else all ones: the identity
            cand = [i for i in range(1, len(shape)) if isinstance(shape[i], int) and shape[i] <= 8]
            if cand:
                reps[self.choice(cand)] = self.choice([2, 3])
        out = tuple(d * k if isinstance(d, int) else d for d, k in zip(shape, reps))
        rn = self.const(np.asarray(reps, np.int64), "repeats")
        return self.emit("Tile", [x, rn], [out], rms=self.rms[x], clonable=True)[0]

    def t_squeeze(self, x: str) -> str | None:
        """Unsqueeze/Squeeze pairs, and Squeeze of the 1-sized axes (GAP output -> [N, C])."""
        shape = self.shape[x]
        r = len(shape)
        ones = [i for i in range(1, r) if shape[i] == 1]
        if ones and self.p(0.5):
            ax = ones if self.p(0.7) else [self.choice(ones)]
            spelled = [a - r if self.p(0.3) else a for a in ax]
            out = tuple(d for i, d in enumerate(shape) if i not in ax)
            if not self.p(0.15) or shape[0] == 1:
                ins = [x, self.const(np.asarray(spelled, np.int64), "sq_axes")]
            else:
                ins = [x]  # no axes: squeezes every 1-sized axis (the batch too, if static 1)
                out = tuple(d for d in shape if d != 1)
            return self.emit("Squeeze", ins, [out], rms=self.rms[x], clonable=True)[0]
        if r >= 5 or self.spare() < 1:
            return None
        a = self.rng.randint(0, r + 1)
        spelled = a - (r + 1) if self.p(0.3) else a
        mid = tuple(shape[:a]) + (1,) + tuple(shape[a:])
        self.reserve += 1
        u = self.emit("Unsqueeze", [x, self.const(np.asarray([spelled], np.int64), "us_axes")],
                      [mid], pool=False, rms=self.rms[x])[0]
        spelled2 = a - (r + 1) if self.p(0.5) else a
        return self.emit("Squeeze", [u, self.const(np.asarray([spelled2], np.int64), "sq_axes")],
                         [shape], rms=self.rms[x])[0]

    def t_size_reshape(self, x: str) -> str | None:
        """Reshape(x, Concat([1], Unsqueeze(Size(x)))): flatten everything, batch static 1."""
        shape = self.shape[x]
        total = _prod(shape)
        if not isinstance(total, int) or total > 4096 or shape[0] != 1:
            return None
        sz = self.emit("Size", [x], [()], dtypes=[I64], pool=False)[0]
        ax = self.const(np.asarray([0], np.int64), "uaxes")
        u = self.emit("Unsqueeze", [sz, ax], [(1,)], dtypes=[I64], pool=False)[0]
        one = self.const(np.asarray([1], np.int64), "one")
        cat = self.emit("Concat", [one, u], [(2,)], dtypes=[I64], pool=False, axis=0)[0]
        return self.emit("Reshape", [x, cat], [(1, total)], rms=self.rms[x])[0]

    def t_sibling(self, x: str) -> str | None:
        """A near-duplicate of a recent node: same inputs, one attribute or constant differs
        (CSE must keep both)."""
        node, shape, rms = self.choice(self.records[-8:])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = list(node.input)
        out_shape = shape
        op = node.op_type
        if op == "BatchNormalization":
            attrs["epsilon"] = float(attrs.get("epsilon", 1e-5)) * 10
        elif op == "Gemm":
            attrs["alpha"] = float(np.float32(float(attrs.get("alpha", 1.0)) * 0.5))
        elif op == "Transpose" and len(shape) >= 3:
            src = self.shape[ins[0]]
            perm = list(attrs.get("perm", list(range(len(src)))[::-1]))
            i, j = self.rng.choice(len(perm), 2, replace=False)
            perm[i], perm[j] = perm[j], perm[i]
            attrs["perm"] = perm
            out_shape = tuple(src[k] for k in perm)
        elif op == "Concat" and len(set(ins)) > 1:
            ins = ins[::-1]
        elif op in ("Add", "Mul", "Sub", "Conv", "Gemm", "Clip", "MatMul") and any(
                i in self.init_arrays and self.init_arrays[i].dtype == np.float32 for i in ins):
            k = next(k for k, i in enumerate(ins) if i in self.init_arrays
                     and self.init_arrays[i].dtype == np.float32)
            arr = self.init_arrays[ins[k]].copy()
            flat = arr.reshape(-1)
            if flat.size:
                flat[self.rng.randint(flat.size)] += np.float32(0.25)
            ins[k] = self.const(arr, "near", node_ok=False)
        elif op == "Slice" and all(i in self.init_arrays for i in ins[1:] if i):
            # the same slice with int32 indices: equal values, different dtype
            ins = [ins[0]] + [self.const(self.init_arrays[i].clip(-2**31, 2**31 - 1).astype(np.int32), "sl32",
                                         node_ok=False) if i else "" for i in ins[1:]]
        else:
            return None
        y = self.emit(op, ins, [out_shape], rms=rms, **attrs)[0]
        return y

    # =====================================================================================

    def templates(self, x: str) -> list[tuple[float, int, Any]]:
        """(weight, node cost, callable) for every template applicable to `x`."""
        shape = self.shape[x]
        r = len(shape)
        img = r == 4 and _static(shape[1:])
        out: list[tuple[float, int, Any]] = []

        def add(w: float, cost: int, needs: Sequence[str], fn: Any) -> None:
            if all(o in self.ops for o in needs):
                out.append((w, cost, fn))

        if img:
            add(3.0, 1, ["Conv"], self.t_conv)
            add(3.0, 3, ["Conv", "BatchNormalization"], self.t_conv_bn_act)
            add(1.5, 7, ["Conv", "BatchNormalization", "Relu", "Add"], self.t_resblock)
            add(0.6, 6, ["GlobalAveragePool", "Conv", "Relu", "Sigmoid", "Mul"], self.t_seblock)
            if shape[2] >= 2 or shape[3] >= 2:  # type: ignore[operator]
                add(0.8, 1, ["MaxPool"], lambda v: self.t_pool(v, "MaxPool"))
                add(0.8, 1, ["AveragePool"], lambda v: self.t_pool(v, "AveragePool"))
            add(0.4 + 0.1 * len(self.nodes) / 10, 1, ["GlobalAveragePool"], self.t_gap)
        if r >= 2 and isinstance(shape[1], int):
            add(1.0, 1, ["BatchNormalization"], self.t_bn)
        if self.any_of("Relu", "Sigmoid", "HardSwish", "Clip"):
            out.append((3.0, 1, self.t_unary))
        if self.any_of("Add", "Mul", "Sub"):
            out.append((2.0, 1, self.t_binary_const))
            out.append((1.5, 1, self.t_binary_act))
        if r >= 2:
            add(1.0, 1, ["Concat"], self.t_concat)
            add(0.8, 1, ["Split"], self.t_split)
            add(1.0, 1, ["Slice"], self.t_slice)
            add(1.0, 1, ["Reshape"], self.t_reshape)
            add(0.8, 1, ["Transpose"], self.t_transpose)
            add(0.4, 5, ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"], self.t_shape_reshape)
        if r >= 3:
            add(0.4 + 0.1 * len(self.nodes) / 10, 1, ["Flatten"], self.t_flatten)
        if r == 2:
            add(3.0, 1, ["Gemm"], self.t_gemm)
        if r >= 2:
            add(2.0 if r == 2 else 0.7, 1, ["MatMul"], self.t_matmul)
        add(0.8, 2, ["QuantizeLinear", "DequantizeLinear"], self.t_qdq)
        if img:
            add(0.5, 1, ["ConvTranspose"], self.t_convtranspose)
        if r >= 2:
            add(0.5, 1, ["Pad"], self.t_pad)
            add(0.4, 1, ["Expand"], self.t_expand)
            add(0.4, 1, ["Tile"], self.t_tile)
            add(0.5, 1, ["Squeeze", "Unsqueeze"], self.t_squeeze)
            add(0.2, 4, ["Size", "Unsqueeze", "Concat", "Reshape"], self.t_size_reshape)
        add(0.4, 1, ["Cast"], self.t_cast)
        add(0.5, 1, ["Identity"], self.t_identity)
        add(0.25, 1, ["If", "Identity", "Mul", "Add", "Constant"], self.t_if)
        add(0.5, 1, ["Dropout"], self.t_dropout)
        if self.any_of("Relu", "Sigmoid", "HardSwish"):
            out.append((0.3, 1, self.t_dead))
        if self.records:
            out.append((0.6, 1, self.t_clone))
            out.append((0.4, 1, self.t_sibling))
        return out

    def make_inputs(self) -> None:
        batch: Dim = "N" if self.p(0.25) else self.choice([1, 1, 2])
        image_ops = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten"}
        image = bool(self.ops & image_ops) and self.p(0.9)
        if image:
            c = self.choice([1, 2, 3, 4, 8])
            h = self.rng.randint(5, 17)
            w = h if self.p(0.6) else self.rng.randint(5, 17)
            self._input("input", (batch, c, h, w))
        if not image or self.p(0.2):
            self._input("features", (batch, self.choice([6, 8, 16, 20])))

    def _input(self, name: str, shape: Shape) -> None:
        self.inputs.append(_value_info(name, F32, shape))
        self.input_names.add(name)
        self.shape[name] = shape
        self.dtype[name] = F32
        self.rms[name] = 1.0
        self.pool.append(name)

    def _snapshot(self) -> tuple:
        return (len(self.nodes), len(self.inits), list(self.pool), Counter(self.uses),
                len(self.records), len(self.forced_outputs), len(self.declare_info))

    def _restore(self, snap: tuple) -> None:
        n, i, pool, uses, rec, forced, decl = snap
        del self.nodes[n:]
        del self.inits[i:]
        self.pool = pool
        self.uses = uses
        del self.records[rec:]
        del self.forced_outputs[forced:]
        del self.declare_info[decl:]

    def build(self) -> onnx.ModelProto:
        self.make_inputs()
        target = self.rng.randint(max(1, self.max_nodes // 3), self.max_nodes + 1)
        stalls = 0
        while len(self.nodes) < target and stalls < 50:
            x = self.pick_source()
            cands = [(w, c, fn) for w, c, fn in self.templates(x) if c <= self.left()]
            if not cands:
                stalls += 1
                continue
            weights = np.asarray([w for w, _, _ in cands])
            i = self.rng.choice(len(cands), p=weights / weights.sum())
            _, cost, fn = cands[i]
            snap = self._snapshot()
            self.reserve = cost
            fn(x)
            self.reserve = 0
            if len(self.nodes) > self.max_nodes:  # a template overshot: undo it
                self._restore(snap)
            if len(self.nodes) == snap[0]:
                stalls += 1
        if not self.nodes:
            raise ValueError(f"random_model: no operator of {sorted(self.ops)} applies")
        return self.finish()

    def output_bait(self) -> None:
        """Outputs that cleanup passes must handle with care: an Identity of a graph input,
        a Shape (fold_shapes makes it an initializer output), a constant expression."""
        if self.left() >= 1 and self.has("Identity") and self.p(0.05):
            src = self.choice(sorted(self.input_names))
            self.forced_outputs.append(self.emit("Identity", [src], [self.shape[src]], pool=False,
                                                 rms=1.0)[0])
        if self.left() >= 1 and self.has("Shape") and self.p(0.05):
            src = self.choice(self.pool)
            self.forced_outputs.append(self.emit("Shape", [src], [(len(self.shape[src]),)],
                                                 dtypes=[I64], pool=False)[0])
        if self.left() >= 1 and self.has("Mul") and self.p(0.04):
            a = self.const(self.rng.standard_normal(3).astype(np.float32), "ka", node_ok=False)
            b = self.const(self.rng.standard_normal(3).astype(np.float32), "kb", node_ok=False)
            self.forced_outputs.append(self.emit("Mul", [a, b], [(3,)], pool=False)[0])

    def finish(self) -> onnx.ModelProto:
        self.output_bait()
        produced = [v for v in self.pool if v not in self.input_names]
        if not produced:
            # only side nodes (e.g. a dead branch) were made: expose their outputs
            produced = [o for n in self.nodes for o in n.output if self.dtype.get(o) == F32][-1:]
            if not produced:
                produced = [self.nodes[-1].output[0]]
        final = produced[-1]
        outputs = [final]
        for v in produced[:-1]:
            if self.uses[v] == 0 and self.p(0.6):
                outputs.append(v)
        consumed = [v for v in produced if self.uses[v] > 0 and v not in outputs]
        for _ in range(self.choice([0, 0, 1, 1, 2])):
            if consumed:
                v = self.choice(consumed)
                consumed.remove(v)
                outputs.append(v)
        for v in self.forced_outputs:
            if v not in outputs:
                outputs.append(v)
        outputs = outputs[:6] if final in outputs[:6] else [final, *outputs[:5]]
        out_vi = [_value_info(v, self.dtype[v], self.shape[v]) for v in outputs]
        inputs = list(self.inputs)
        floats = [t for t in self.inits if t.data_type == F32]
        if floats and self.p(0.1):
            # Initializers listed as graph inputs too (IR >= 4): defaults a caller may
            # override, so no pass may treat them as constants.
            for _ in range(self.choice([1, 1, 2])):
                t = self.choice(floats)
                if t.name not in {i.name for i in inputs}:
                    inputs.append(_value_info(t.name, F32, tuple(t.dims)))
        vi_names = [v for v in dict.fromkeys(self.declare_info) if v not in outputs]
        value_info = [_value_info(v, self.dtype[v], self.shape[v]) for v in vi_names]
        graph = helper.make_graph(self.nodes, f"graphgen_{self.seed}", inputs, out_vi,
                                  initializer=self.inits, value_info=value_info)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=_IR_FOR_OPSET[self.opset],
                                  producer_name="homec.testing.graphgen",
                                  producer_version=GENERATOR_VERSION)
        helper.set_model_props(model, {
            "graphgen.seed": str(self.seed),
            "graphgen.max_nodes": str(self.max_nodes),
            "graphgen.opset": str(self.opset),
            "graphgen.version": GENERATOR_VERSION,
        })
        return model


def random_model(seed: int, *, max_nodes: int = 40, ops: Sequence[str] = DEFAULT_OPS,
                 opset: int = 17) -> onnx.ModelProto:
    """A small valid random ONNX model, fully determined by its arguments.

    seed: any int >= 0 (the numpy RandomState seed; taken modulo 2**32).
    max_nodes: upper bound on the node count (Constant nodes included); the count itself is
      drawn from [max_nodes // 3, max_nodes].
    ops: operators the generator may use (a subset of DEFAULT_OPS). Composite blocks are
      used only when all their operators are allowed.
    opset: default-domain opset, 13..21 (ir_version follows it).
    """
    return _Gen(int(seed) % 2**32, max_nodes, tuple(ops), opset).build()


# =======================================================================================
# Big synthetic graphs for benchmarks
# =======================================================================================


class _Big:
    """Fast builder for large graphs: fixed small tensors, NCHW [1, C, S, S] throughout."""

    def __init__(self, seed: int, channels: int = 8, size: int = 8):
        self.rng = np.random.RandomState(seed)
        self.c = channels
        self.s = size
        # Protos are written in place (no make_node / make_graph copies) and attributes are
        # built once and copied: 50k nodes in a few seconds.
        self.model = onnx.ModelProto()
        self.g = self.model.graph
        self.nodes = self.g.node
        self.inits = self.g.initializer
        self._attrs: dict[tuple[str, str], onnx.AttributeProto] = {}
        self.i = 0
        # Shared small constants (a realistic exporter would emit one per use; sharing keeps
        # 50k-node files small and fast to build).
        self.shape_flat = self.init(np.asarray([0, -1], np.int64), "shape_flat")
        self.shape_back = self.init(np.asarray([0, channels, size, size], np.int64), "shape_back")
        self.zero = self.init(np.float32(0.0), "zero")
        self.six = self.init(np.float32(6.0), "six")
        self.qscale = self.init(np.float32(8.0 / 255.0), "qscale")
        self.qzp = self.init(np.uint8(128), "qzp")
        self.split = self.init(np.asarray([channels // 2, channels - channels // 2], np.int64), "split")

    def init(self, arr: np.ndarray, hint: str) -> str:
        self.i += 1
        name = f"{hint}.{self.i}"
        arr = np.asarray(arr)
        t = self.inits.add()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.raw_data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        self.i += 1
        outs = [f"v{self.i}_{k}" if n_out > 1 else f"v{self.i}" for k in range(n_out)]
        n = self.nodes.add()
        n.op_type = op
        n.name = f"{op}_{self.i}"
        n.input.extend(inputs)
        n.output.extend(outs)
        for key in sorted(attrs):
            ck = (key, repr(attrs[key]))
            a = self._attrs.get(ck)
            if a is None:
                a = self._attrs[ck] = helper.make_attribute(key, attrs[key])
            n.attribute.append(a)
        return outs

    def conv(self, x: str, cin: int, cout: int, k: int, group: int = 1) -> str:
        fan = (cin // group) * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) / math.sqrt(fan)).astype(np.float32)
        b = (0.05 * self.rng.standard_normal(cout)).astype(np.float32)
        p = k // 2
        return self.node("Conv", [x, self.init(w, "w"), self.init(b, "b")], kernel_shape=[k, k],
                         pads=[p, p, p, p], group=group)[0]

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        ins = [x, self.init((1 + 0.1 * r.standard_normal(c)).astype(np.float32), "g"),
               self.init((0.1 * r.standard_normal(c)).astype(np.float32), "beta"),
               self.init((0.1 * r.standard_normal(c)).astype(np.float32), "mean"),
               self.init((1 + 0.1 * np.abs(r.standard_normal(c))).astype(np.float32), "var")]
        return self.node("BatchNormalization", ins, epsilon=1e-5)[0]

    # blocks: each returns (output, node count)
    def block(self, x: str, kind: int) -> str:
        c = self.c
        if kind == 0:  # residual block
            y = self.node("Relu", [self.bn(self.conv(x, c, c, 3), c)])[0]
            y = self.bn(self.conv(y, c, c, 3), c)
            return self.node("Relu", [self.node("Add", [x, y])[0]])[0]
        if kind == 1:  # depthwise-separable with ReLU6 and HardSwish
            y = self.node("Clip", [self.bn(self.conv(x, c, c, 3, group=c), c), self.zero, self.six])[0]
            return self.node("HardSwish", [self.bn(self.conv(y, c, c, 1), c)])[0]
        if kind == 2:  # squeeze-excitation
            g = self.node("GlobalAveragePool", [x])[0]
            r = self.node("Relu", [self.conv(g, c, max(1, c // 2), 1)])[0]
            s = self.node("Sigmoid", [self.conv(r, max(1, c // 2), c, 1)])[0]
            return self.node("Mul", [x, s])[0]
        if kind == 3:  # quantize-dequantize
            q = self.node("QuantizeLinear", [x, self.qscale, self.qzp])[0]
            return self.node("DequantizeLinear", [q, self.qscale, self.qzp])[0]
        if kind == 4:  # exporter leftovers: Identity, Dropout, transpose pair, no-op reshape
            y = self.node("Identity", [x])[0]
            y = self.node("Dropout", [y])[0]
            y = self.node("Transpose", [y], perm=[0, 2, 3, 1])[0]
            y = self.node("Transpose", [y], perm=[0, 3, 1, 2])[0]
            y = self.node("Reshape", [y, self.shape_flat])[0]
            return self.node("Reshape", [y, self.shape_back])[0]
        if kind == 5:  # channel split / concat
            a, b = self.node("Split", [x, self.split], n_out=2, axis=1)
            return self.node("Concat", [self.node("Relu", [a])[0], b], axis=1)[0]
        if kind == 6:  # per-channel affine (Mul, Add by [C,1,1] constants) after a conv
            y = self.conv(x, c, c, 1)
            k = (1 + 0.1 * self.rng.standard_normal((c, 1, 1))).astype(np.float32)
            y = self.node("Mul", [y, self.init(k, "k")])[0]
            k = (0.1 * self.rng.standard_normal((c, 1, 1))).astype(np.float32)
            return self.node("Add", [y, self.init(k, "k")])[0]
        raise AssertionError(kind)

    BLOCK_WEIGHTS = np.asarray([4, 3, 1, 1, 1, 1, 2], dtype=np.float64)

    def kinds(self, n: int) -> np.ndarray:
        p = self.BLOCK_WEIGHTS / self.BLOCK_WEIGHTS.sum()
        return self.rng.choice(len(p), size=n, p=p)

    def head(self, x: str) -> str:
        g = self.node("GlobalAveragePool", [x])[0]
        f = self.node("Flatten", [g], axis=1)[0]
        w = (self.rng.standard_normal((10, self.c)) / math.sqrt(self.c)).astype(np.float32)
        return self.node("Gemm", [f, self.init(w, "fc_w"), self.init(np.zeros(10, np.float32), "fc_b")],
                         transB=1)[0]


def _big_blocks(b: _Big, x: str, budget: int) -> str:
    # ~5 nodes per block on average; draw blocks until the budget is spent.
    sizes = {0: 7, 1: 6, 2: 6, 3: 2, 4: 6, 5: 3, 6: 3}
    while True:
        for kind in b.kinds(max(1, budget // 5)):
            if len(b.nodes) + sizes[int(kind)] > budget:
                return x
            x = b.block(x, int(kind))
        if len(b.nodes) + 7 > budget:
            return x


def synthetic_chain(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A deep sequential network of exactly `n_nodes` nodes (n_nodes >= 16).

    Stem conv, then a chain of blocks drawn at random (residual conv/BN/ReLU blocks,
    depthwise-separable blocks, squeeze-excitation, Q/DQ pairs, exporter leftovers such as
    Identity/Dropout/transpose pairs/no-op reshapes, split/concat, per-channel affine),
    then GlobalAveragePool -> Flatten -> Gemm, padded with Relu to the exact count.
    Tensors are [1, 8, 8, 8], so 50k nodes build in a few seconds.
    """
    if n_nodes < 16:
        raise ValueError("synthetic_chain needs n_nodes >= 16")
    b = _Big(seed)
    x = b.node("Relu", [b.conv("input", b.c, b.c, 3)])[0]
    x = _big_blocks(b, x, n_nodes - 4)
    y = b.head(x)
    return _finish_big(b, y, n_nodes, f"synthetic_chain_{n_nodes}")


def synthetic_wide(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A wide network of exactly `n_nodes` nodes (n_nodes >= 64): many parallel branches.

    Levels of W parallel blocks all reading the same value (heavy fan-out, W ~ sqrt(n)/2),
    merged by an Add tree, or by Concat + 1x1 Conv in groups of four; then the classifier
    head. Tensors are [1, 8, 8, 8].
    """
    if n_nodes < 64:
        raise ValueError("synthetic_wide needs n_nodes >= 64")
    b = _Big(seed)
    width = int(min(128, max(4, math.isqrt(n_nodes) // 2)))
    x = b.node("Relu", [b.conv("input", b.c, b.c, 3)])[0]
    budget = n_nodes - 4
    sizes = {0: 7, 1: 6, 2: 6, 3: 2, 4: 6, 5: 3, 6: 3}
    while True:
        kinds = [int(k) for k in b.kinds(width)]
        level_cost = sum(sizes[k] for k in kinds) + 2 * width
        if len(b.nodes) + level_cost > budget:
            break
        branches = [b.block(x, k) for k in kinds]
        if b.rng.random_sample() < 0.5:
            while len(branches) > 1:
                nxt = [b.node("Add", [branches[i], branches[i + 1]])[0]
                       for i in range(0, len(branches) - 1, 2)]
                if len(branches) % 2:
                    nxt.append(branches[-1])
                branches = nxt
            x = b.node("Relu", [branches[0]])[0]
        else:
            merged = []
            for i in range(0, len(branches), 4):
                grp = branches[i:i + 4]
                cat = b.node("Concat", grp, axis=1)[0] if len(grp) > 1 else grp[0]
                merged.append(b.conv(cat, b.c * len(grp), b.c, 1))
            while len(merged) > 1:
                nxt = [b.node("Add", [merged[i], merged[i + 1]])[0] for i in range(0, len(merged) - 1, 2)]
                if len(merged) % 2:
                    nxt.append(merged[-1])
                merged = nxt
            x = b.node("Relu", [merged[0]])[0]
    x = _big_blocks(b, x, budget)
    y = b.head(x)
    return _finish_big(b, y, n_nodes, f"synthetic_wide_{n_nodes}")


def _finish_big(b: _Big, out: str, n_nodes: int, name: str) -> onnx.ModelProto:
    while len(b.nodes) < n_nodes:
        out = b.node("Relu", [out])[0]
    m = b.model
    m.ir_version = 8
    m.producer_name = "homec.testing.graphgen"
    m.producer_version = GENERATOR_VERSION
    m.opset_import.add().CopyFrom(helper.make_opsetid("", 17))
    b.g.name = name
    b.g.input.append(helper.make_tensor_value_info("input", F32, [1, b.c, b.s, b.s]))
    b.g.output.append(helper.make_tensor_value_info(out, F32, [1, 10]))
    return m


# =======================================================================================
# Hypothesis strategies
# =======================================================================================


def seeds():
    """Strategy: generator seeds (shrinks toward 0)."""
    from hypothesis import strategies as st

    return st.integers(min_value=0, max_value=2**32 - 1)


def models(*, min_nodes: int = 1, max_nodes: int = 60, ops: Sequence[str] = DEFAULT_OPS,
           opsets: Sequence[int] = (17,)):
    """Strategy: random models (`random_model`) over drawn seeds, sizes and opsets.

    Each model records its seed and size in metadata_props (`graphgen.seed`,
    `graphgen.max_nodes`), so a failing example can be rebuilt with `random_model`.
    """
    from hypothesis import strategies as st

    return st.builds(
        lambda seed, n, opset: random_model(seed, max_nodes=n, ops=ops, opset=opset),
        seeds(), st.integers(min_value=min_nodes, max_value=max_nodes), st.sampled_from(list(opsets)))
