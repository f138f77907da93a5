"""Make dynamic input dims static and record the static type of every value."""

from __future__ import annotations

from homec.analysis.shapes import format_shape, infer_shapes, parse_input_shapes
from homec.context import PassContext
from homec.errors import UsageError
from homec.ir import Dim, Graph, TensorType, Value
from homec.registry import Stats, Tolerance, register_pass


@register_pass("freeze_shapes", tolerance=Tolerance.exact(), selectable=False)
def freeze_shapes(graph: Graph, ctx: PassContext, *, shapes: list[str] = (),
                  require: bool = True) -> Stats:
    """Fix every graph input's dynamic dims to given sizes and type every value statically.

    Semantics: a model whose input has dims (batch, h, w) computes, for inputs of one size,
    exactly what the model with those dims fixed computes; only the declared types change,
    so outputs are identical for inputs of the frozen shape (and the model refuses others).
    Targets with static shapes (accelerator compilers, MCU arenas) need every dim known.

    The sizes come from `shapes` and from the compile's --input-shape (ctx.input_shapes);
    `shapes` wins for an input named in both. A given shape must match the declared one
    (same rank, every static dim equal), else UsageError naming the input and both shapes;
    naming something that is not a graph input is a UsageError too. An input with dynamic
    dims and no given shape is a UsageError when `require` or the target has static shapes,
    else it is left dynamic. Initializers listed as inputs (overridable defaults) have the
    shape of their data and are not touched.

    Then shapes are inferred (homec.analysis.shapes.infer_shapes: ONNX's inference with
    data propagation, onnxruntime's symbolic inference where that stops) and every
    top-level value whose declared type is missing or has fewer static dims takes the
    inferred type, so the emitted model describes the graph fully.

    Options:
      shapes: input shapes, `NAME=DIMS` each (`x=1x3x224x224` or `x=1,3,224,224`).
      require: refuse an input left with dynamic dims (false: leave it dynamic).

    Statistics: inputs_frozen (inputs whose type changed), dims_frozen (dims made static;
    all of an input of unknown rank), values_typed (other values given a more static type).
    """
    given = dict(getattr(ctx, "input_shapes", None) or {})
    given.update(parse_input_shapes(shapes))
    strict = require or bool(ctx.target is not None and ctx.target.static_shapes)
    inputs = {v.name: v for v in graph.inputs if not v.is_initializer}
    for name in given:
        if name not in inputs:
            valid = ", ".join(f"`{n}`" for n in inputs) or "(none)"
            raise UsageError(f"freeze_shapes: the model has no input `{name}` to give a shape "
                             f"to; its inputs are: {valid}")

    # Check everything before changing anything: an error leaves the graph as it was.
    frozen: list[tuple[Value, TensorType, int]] = []
    for name, v in inputs.items():
        declared = v.tensor_type()
        if name in given:
            new, dims = _frozen_type(v, declared, tuple(given[name]))
            if new != declared:
                frozen.append((v, new, dims))
        elif isinstance(v.type, TensorType) and strict and not _is_static(declared):
            raise UsageError(f"input `{name}` has {_dynamic_text(declared)}; give "
                             f"--input-shape {name}=DIMS")

    st: Stats = {"inputs_frozen": 0, "dims_frozen": 0, "values_typed": 0}
    for v, new, dims in frozen:
        v.type = new
        st["inputs_frozen"] += 1
        st["dims_frozen"] += dims
    st["values_typed"] = _stamp_inferred_types(graph)
    return st


def _frozen_type(v: Value, declared: TensorType | None, shape: tuple[int, ...]) -> tuple[TensorType, int]:
    """The static type of input `v` with `shape`, and how many dims that makes static."""
    name = v.name
    wanted = "x".join(str(d) for d in shape)
    if declared is None:
        raise UsageError(f"input `{name}` has no declared tensor type; homec cannot give it "
                         f"the shape {wanted}")
    if declared.shape is None:
        return TensorType(declared.elem_type, tuple(Dim.of(d) for d in shape),
                          declared.denotation), len(shape)
    if len(declared.shape) != len(shape):
        raise UsageError(f"input `{name}` is {format_shape(declared)} (rank "
                         f"{len(declared.shape)}) in the model; the given shape {wanted} has "
                         f"rank {len(shape)}")
    dims: list[Dim] = []
    for i, (d, n) in enumerate(zip(declared.shape, shape)):
        if d.is_static and d.value != n:
            raise UsageError(f"input `{name}` is {format_shape(declared)} in the model; the "
                             f"given shape {wanted} differs in dim {i} ({n} != {d.value})")
        dims.append(d if d.is_static else Dim(value=n, denotation=d.denotation))
    made_static = sum(1 for d in declared.shape if not d.is_static)
    return TensorType(declared.elem_type, tuple(dims), declared.denotation, declared.sparse), made_static


def _is_static(t: TensorType | None) -> bool:
    return t is not None and t.static_shape() is not None


def _dynamic_text(t: TensorType | None) -> str:
    if t is None or t.shape is None:
        return "an unknown rank"
    names = [d.param or "?" for d in t.shape if not d.is_static]
    return f"dynamic dims ({', '.join(names)})"


def _static_count(t: TensorType | None) -> int:
    if t is None or t.shape is None:
        return -1
    return sum(1 for d in t.shape if d.is_static)


def _stamp_inferred_types(graph: Graph) -> int:
    """Give every node output of the top-level graph its inferred type where that has more
    static dims than its declared one; returns how many values changed."""
    inferred = infer_shapes(graph)
    typed = 0
    for node in graph.nodes:
        for v in node.outputs:
            if v is None or not v.name or (v.type is not None and not isinstance(v.type, TensorType)):
                continue
            t = inferred.get(v.name)
            old = v.tensor_type()
            if t is None or t.shape is None or _static_count(t) <= _static_count(old):
                continue
            if not t.elem_type and old is not None:
                t = TensorType(old.elem_type, t.shape)
            graph.set_type(v, t)  # also lists an intermediate in the emitted value_info
            typed += 1
    return typed
