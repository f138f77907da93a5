"""Shape inference for analysis: value name -> inferred `TensorType`.

homec does not hand-write shape inference. `infer_shapes` emits the graph to ONNX, pins the
input dims the user gave (`--input-shape x=1x3x224x224`), runs ONNX's own inference with data
propagation and, when some dims are still unknown (or only known as an ONNX-invented
``unk__N`` name), falls back to onnxruntime's symbolic shape inference, which can carry
symbolic expressions through Conv/Resize/Reshape arithmetic. The result is converted back to
IR `TensorType`s. The protobuf handling is confined to this module's private helpers.
"""

from __future__ import annotations

import logging
import os
import tempfile
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from homec.errors import UsageError
from homec.ir import Dim, Graph, SparseTensor, Tensor, TensorType

__all__ = ["infer_shapes", "parse_input_shapes", "format_shape"]

# Names the inference engines invent for a dim they could not resolve (ONNX: unk__3,
# onnxruntime: Conv_12_o0__d2); they carry no more information than an unknown dim.
_INVENTED = re.compile(r"^unk__\d+$|_o\d+__d\d+$")


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse CLI shape specs such as ``x=1x3x224x224`` or ``x=1,3,224,224``.

    Each spec names one graph input; the text after the last ``=`` is a list of positive
    integers separated by ``x`` or ``,`` (not both). Raises UsageError on malformed text or a
    repeated name.
    """
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims_text = spec.rpartition("=")
        name, dims_text = name.strip(), dims_text.strip()
        if not sep or not name:
            raise UsageError(f"--input-shape {spec!r}: expected NAME=DIMS, e.g. x=1x3x224x224")
        if not dims_text:
            raise UsageError(f"--input-shape {spec!r}: no dimensions after '='")
        if "," in dims_text and ("x" in dims_text or "X" in dims_text):
            raise UsageError(f"--input-shape {spec!r}: use either 'x' or ',' between dims, not both")
        parts = re.split(r"[,xX]", dims_text)
        dims: list[int] = []
        for p in parts:
            p = p.strip()
            if not p.isdigit():
                raise UsageError(f"--input-shape {spec!r}: dimension {p!r} is not a positive "
                                 "integer")
            if int(p) <= 0:
                raise UsageError(f"--input-shape {spec!r}: dimension {p} must be positive")
            dims.append(int(p))
        if name in out:
            raise UsageError(f"--input-shape: input {name!r} is given twice")
        out[name] = tuple(dims)
    return out


def format_shape(t: TensorType | None) -> str:
    """A compact display form: ``[1,3,N,?]``; ``?`` for an unknown rank."""
    if t is None or t.shape is None:
        return "?"
    return "[" + ",".join(str(d) for d in t.shape) + "]"


def infer_shapes(
    graph: Graph,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    symbolic_fallback: bool = True,
) -> dict[str, TensorType]:
    """Infer the TensorType of every value of the top-level `graph`.

    `input_shapes` pins graph-input dims (validated against the declared types: unknown
    names and wrong ranks raise UsageError). Initializers take their type from the tensor
    data. Values whose type cannot be inferred keep their declared type, or are absent.
    The graph is not modified (inference runs on an emitted copy).

    `symbolic_fallback` allows onnxruntime's symbolic inference when ONNX leaves dims
    unknown although all input dims are static (it is slower, and runs only then).
    """
    pinned = _validate_input_shapes(graph, dict(input_shapes or {}))

    result: dict[str, TensorType] = {}
    for v in graph.values():  # declared types first, so inference can refine them
        t = v.tensor_type()
        if t is not None and v.name:
            result[v.name] = t
    for name, shape in pinned.items():
        old = result.get(name)
        elem = old.elem_type if old is not None else 0
        result[name] = TensorType(elem, tuple(Dim(value=d) for d in shape))

    inferred = _run_inference(graph, pinned, symbolic_fallback)
    for name, t in inferred.items():
        result[name] = _merge(result.get(name), t)
    for name, v in graph.initializers.items():
        c = v.const
        if isinstance(c, (Tensor, SparseTensor)):
            dtype = c.dtype if isinstance(c, Tensor) else c.values.dtype
            result[name] = TensorType(dtype, tuple(Dim.of(d) for d in c.dims),
                                      sparse=isinstance(c, SparseTensor))
    return result


# ---------------------------------------------------------------------------------------
# Validation and merging (IR types only)
# ---------------------------------------------------------------------------------------


def _validate_input_shapes(graph: Graph, shapes: dict[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    inputs = {v.name: v for v in graph.inputs}
    valid = ", ".join(repr(n) for n in inputs) or "(none)"
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        v = inputs.get(name)
        if v is None:
            raise UsageError(f"--input-shape: the model has no input {name!r}; its inputs are: "
                             f"{valid}")
        dims = tuple(int(d) for d in shape)
        if v.type is not None and not isinstance(v.type, TensorType):
            raise UsageError(f"--input-shape: input {name!r} is not a tensor; its shape cannot "
                             "be set")
        declared = v.tensor_type()
        if declared is not None and declared.shape is not None:
            if len(declared.shape) != len(dims):
                raise UsageError(f"--input-shape: input {name!r} has rank "
                                 f"{len(declared.shape)} {format_shape(declared)}, but "
                                 f"{len(dims)} dims were given")
            for i, (d, n) in enumerate(zip(declared.shape, dims)):
                if d.is_static and d.value != n:  # paddle2onnx's -1 is a dynamic dim
                    raise UsageError(f"--input-shape: input {name!r} dim {i} is fixed to "
                                     f"{d.value} by the model {format_shape(declared)}, got {n}")
        out[name] = dims
    return out


def _dim_rank(d: Dim) -> int:
    """How much a dim tells: 2 static, 1 a meaningful name or expression, 0 nothing (a -1
    written by paddle2onnx tells nothing)."""
    if d.is_static:
        return 2
    if d.param and not _INVENTED.search(d.param):
        return 1
    return 0


def _merge(old: TensorType | None, new: TensorType) -> TensorType:
    """Combine two types of one value dim by dim, keeping the more informative dim (the old
    one on a tie, so a declared output name survives an engine's expression for it)."""
    if old is None:
        return new
    elem = new.elem_type or old.elem_type
    if old.shape is None or new.shape is None or len(new.shape) != len(old.shape):
        return TensorType(elem, old.shape if new.shape is None else new.shape)
    dims = tuple(n if _dim_rank(n) > _dim_rank(o) else o for o, n in zip(old.shape, new.shape))
    return TensorType(elem, dims)


def _needs_more(types: Mapping[str, TensorType], names: Iterable[str]) -> bool:
    for name in names:
        t = types.get(name)
        if t is None or t.shape is None or any(_dim_rank(d) == 0 for d in t.shape):
            return True
    return False


# ---------------------------------------------------------------------------------------
# The protobuf side: emit, pin inputs, infer, read back
# ---------------------------------------------------------------------------------------


def _run_inference(graph: Graph, pinned: Mapping[str, tuple[int, ...]],
                   symbolic_fallback: bool) -> dict[str, TensorType]:
    """Types found by ONNX inference, refined by onnxruntime's when dims remain unknown."""
    import onnx

    from homec.onnx_io import graph_to_model

    # Large float weights as typed inputs: inference needs their shapes, not their bytes.
    model = graph_to_model(graph, weights_as_inputs_over=4096)
    # paddle2onnx's dim_value -1 means "dynamic": left in, ONNX inference stops at the first
    # node whose inferred dim (1) contradicts it
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.Clear()
    for inp in model.graph.input:
        if inp.name in pinned:
            shape = inp.type.tensor_type.shape
            shape.Clear()
            for d in pinned[inp.name]:
                shape.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True, strict_mode=False)
    except Exception:  # e.g. a >2 GB model or an op schema onnx cannot handle: keep declared
        inferred = model
    types = _types_of(inferred)

    # onnxruntime's inference helps when ONNX's gave up on some op although every input dim
    # is known; with symbolic inputs it would only rename unknown dims to expressions (no
    # count changes) at a cost of seconds on a large model, so it is skipped then.
    produced = [o.name for n in graph.nodes for o in n.outputs if o is not None and o.name]
    inputs = [v.name for v in graph.inputs if not v.is_initializer]
    static_inputs = all(types.get(n) is not None and types[n].static_shape() is not None
                        for n in inputs)
    if symbolic_fallback and static_inputs and _needs_more(types, produced):
        for name, t in _ort_symbolic(inferred).items():
            types[name] = _merge(types.get(name), t)
    return types


def _ort_symbolic(model: Any) -> dict[str, TensorType]:
    """onnxruntime's symbolic shape inference, or nothing when it fails on this model."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception:
        return {}
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.CRITICAL)
    # When inference is incomplete, onnxruntime saves "sym_shape_infer_temp.onnx" in the
    # current directory; run it from a scratch directory so nothing lands in the user's.
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory(prefix="homec-shapes-") as scratch:
            os.chdir(scratch)
            try:
                out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, verbose=0)
            finally:
                os.chdir(cwd)
    except Exception:
        return {}
    finally:
        log.setLevel(level)
    return _types_of(out) if out is not None else {}


def _types_of(model: Any) -> dict[str, TensorType]:
    """Tensor types of a ModelProto's graph inputs, outputs and value_info, by name."""
    out: dict[str, TensorType] = {}
    g = model.graph
    # Large graphs repeat a few types many times: convert each distinct TypeProto once.
    converted: dict[bytes, TensorType | None] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        key = vi.type.SerializeToString()
        t = converted.get(key, _MISSING)
        if t is _MISSING:
            t = converted[key] = _tensor_type_of_proto(vi.type)
        if t is not None:
            out[vi.name] = _merge(out.get(vi.name), t) if vi.name in out else t
    return out


_MISSING: Any = object()


def _tensor_type_of_proto(tp: Any) -> TensorType | None:
    which = tp.WhichOneof("value")
    if which not in ("tensor_type", "sparse_tensor_type"):
        return None
    tt = getattr(tp, which)
    shape = None
    if tt.HasField("shape"):
        shape = tuple(
            Dim.of(d.dim_value) if d.HasField("dim_value")
            else Dim(param=d.dim_param or None) if d.HasField("dim_param") else Dim()
            for d in tt.shape.dim
        )
    return TensorType(tt.elem_type, shape, sparse=which == "sparse_tensor_type")
