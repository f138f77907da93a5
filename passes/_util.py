"""Helpers shared by the cleanup passes: constants, value replacement, type lookup.

Everything here edits graphs through `Graph` methods only.

Constants. An initializer is a constant unless a caller may override it: from IR version 4
on, an initializer that is also listed as a graph input is only a default value (ONNX IR
spec); below IR 4 every initializer must be listed as an input and onnxruntime treats them
all as constants (it rejects feeds for them), so they are constants here too. Consequently a
new initializer in an IR < 4 top-level graph is also listed as a graph input (the checker
requires it), and IR < 4 subgraphs get no new initializers at all.

Replacing a value that is a graph output keeps the output's public name: the replacement
value is renamed to it when that is possible (same graph, not itself a graph input or
output); otherwise the rewrite is declined and the node stays.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from homec.dtypes import onnx_dtype_of
from homec.errors import UnsupportedError
from homec.ir import AttrType, Dim, Graph, Node, SparseTensor, Tensor, TensorType, Value

# Ops whose result is not a function of their inputs: never folded, merged or evaluated.
NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli",
})

# Domains whose operators are specified (and implemented by onnxruntime): pure functions.
STANDARD_DOMAINS = frozenset({"", "ai.onnx.ml"})

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def ir_version(graph: Graph) -> int:
    root = graph.root
    return root.model.ir_version if root.model is not None else 10


def opset(graph: Graph, domain: str = "") -> int:
    v = graph.opset(domain)
    return v if v is not None else 21


def all_graphs(graph: Graph) -> Iterator[Graph]:
    """`graph` and every nested subgraph, parents before children."""
    yield from graph.subgraphs()


def is_const(v: Value | None) -> bool:
    """True for an initializer whose value cannot be overridden by a caller."""
    if v is None or not isinstance(v.const, Tensor):
        return False
    return not v.is_overridable


def const_of(v: Value | None) -> np.ndarray | None:
    """The array of a constant value (see `is_const`), else None."""
    return v.const.numpy() if is_const(v) else None  # type: ignore[union-attr]


def input_const(node: Node, slot: int) -> np.ndarray | None:
    """`node.input_const(slot)` that also refuses overridable initializers."""
    if slot >= len(node.inputs):
        return None
    return const_of(node.inputs[slot])


def can_add_constant(graph: Graph) -> bool:
    """Whether new initializers may be created in `graph` (not in IR < 4 subgraphs)."""
    return graph.parent is None or ir_version(graph) >= 4


def tensor_type_of(data: Tensor | np.ndarray) -> TensorType:
    if isinstance(data, Tensor):
        return TensorType(data.dtype, tuple(Dim.of(d) for d in data.dims))
    return TensorType(onnx_dtype_of(data.dtype), tuple(Dim(value=int(d)) for d in data.shape))


def add_constant(graph: Graph, name: str, data: Tensor | SparseTensor | np.ndarray) -> Value:
    """A new constant in `graph` named `name` (which must be free), typed from its data."""
    if isinstance(data, np.ndarray):
        data = Tensor.from_numpy(data, name)
    v = graph.add_initializer(name, data)
    if isinstance(data, Tensor):
        v.type = tensor_type_of(data)
    if graph.parent is None and ir_version(graph) < 4:
        graph.add_input(v)  # IR < 4: every initializer is also a graph input
    return v


def remove_constant(v: Value) -> None:
    """Remove an unused initializer; below IR 4 also its (non-overridable) input entry."""
    g = v.graph
    assert g is not None
    if v.is_graph_input:
        g.set_inputs([i for i in g.inputs if i is not v])
    g.remove_initializer(v)


def is_output(v: Value) -> bool:
    """A graph output of the graph defining it or of a subgraph capturing it."""
    return v.is_graph_output


def used(v: Value | None) -> bool:
    """Read by some node (in any scope) or a graph output."""
    return v is not None and (bool(v.uses) or is_output(v))


def can_take_name(new: Value, old: Value) -> bool:
    """Whether `new` may be renamed to `old`'s name so that `old`'s output name survives."""
    return (new is not old and new.graph is not None and new.graph is old.graph
            and not new.is_graph_input and not is_output(new)
            and (new.producer is not None or new.const is not None))


def can_replace(old: Value, new: Value) -> bool:
    """Whether `replace_value(old, new)` will succeed."""
    return not is_output(old) or can_take_name(new, old)


class Names:
    """Fresh value names for a pass run: a handle on `Graph.fresh_name`, which caches the
    tree's names and sees every value defined since (so names never collide)."""

    def __init__(self, graph: Graph):
        self.graph = graph.root

    def fresh(self, hint: str) -> str:
        return self.graph.fresh_name(hint)


def replace_uses(old: Value, new: Value) -> None:
    """`Graph.replace_all_uses` from `old`'s own graph (output lists included)."""
    g = old.graph
    assert g is not None
    g.replace_all_uses(old, new)


def replace_value(old: Value, new: Value, names: Names, *, keep_name: bool = False) -> bool:
    """Make every reader of `old` read `new`; a graph output `old` keeps its name.

    `new` is renamed to `old`'s name when `old` is a graph output, or whenever possible with
    `keep_name` (for a fresh value replacing `old`). Returns False (and changes nothing)
    when `old` is a graph output and `new` cannot take its name (a graph input, another
    output, or a value of an enclosing scope).
    """
    g = old.graph
    assert g is not None
    rename = can_take_name(new, old)
    if is_output(old) and not rename:
        return False
    if rename and (keep_name or is_output(old)):
        name = old.name
        g.rename_value(old, names.fresh(name))
        g.rename_value(new, name)
        if old.type is not None and (new.type is None or _shape_known(old) and not _shape_known(new)):
            new.type = old.type  # the output keeps the shape it declared
    replace_uses(old, new)
    return True


def _shape_known(v: Value) -> bool:
    t = v.tensor_type()
    return t is not None and t.shape is not None


def constant_in_place(old: Value, data: Tensor | SparseTensor | np.ndarray, names: Names) -> Value:
    """Replace `old` by a new constant holding `data` under `old`'s name (graph outputs
    thereby keep their names); `old` is renamed out of the way and left without readers."""
    g = old.graph
    assert g is not None
    name = old.name
    g.rename_value(old, names.fresh(name))
    new = add_constant(g, name, data)
    replace_uses(old, new)
    return new


def remove_if_unused(graph: Graph, node: Node) -> bool:
    """Remove `node` when none of its outputs is used; True if removed."""
    if any(used(o) for o in node.outputs):
        return False
    graph.remove_nodes([node])
    return True


# ---------------------------------------------------------------------------------------
# Type lookup
# ---------------------------------------------------------------------------------------


class Types:
    """Tensor types of values: inferred for the top-level graph, declared elsewhere.

    Shapes come from `homec.analysis.shapes.infer_shapes` (run once, on the first query);
    values created afterwards fall back to their declared type, constants to their data.
    """

    def __init__(self, graph: Graph, *, infer: bool = True):
        self.root = graph.root
        self._infer = infer
        self._inferred: dict[str, TensorType] | None = None

    @property
    def inferred(self) -> dict[str, TensorType]:
        """Inferred types by name, computed on first use (inference emits the model)."""
        if self._inferred is None:
            self._inferred = {}
            if self._infer:
                try:
                    from homec.analysis.shapes import infer_shapes

                    # No onnxruntime symbolic fallback: it is slow on big models and, when
                    # it gives up, writes sym_shape_infer_temp.onnx (+ .data) into the cwd.
                    self._inferred = infer_shapes(self.root, symbolic_fallback=False)
                except Exception:  # inference is best effort: fall back to declared types
                    self._inferred = {}
        return self._inferred

    def of(self, v: Value | None) -> TensorType | None:
        if v is None:
            return None
        if isinstance(v.const, Tensor):
            return tensor_type_of(v.const)
        if v.graph is self.root:
            t = self.inferred.get(v.name)
            if t is not None:
                return _best(v.tensor_type(), t)
        return v.tensor_type()

    def elem(self, v: Value | None) -> int | None:
        t = self.of(v)
        return t.elem_type if t is not None and t.elem_type else None

    def rank(self, v: Value | None) -> int | None:
        t = self.of(v)
        return None if t is None else t.rank

    def dims(self, v: Value | None) -> tuple[int | None, ...] | None:
        """Per-dim sizes (None where not static), or None when the rank is unknown."""
        t = self.of(v)
        if t is None or t.shape is None:
            return None
        return tuple(d.value for d in t.shape)

    def static(self, v: Value | None) -> tuple[int, ...] | None:
        t = self.of(v)
        return None if t is None else t.static_shape()


def _best(declared: TensorType | None, inferred: TensorType) -> TensorType:
    if declared is None or declared.shape is None:
        return inferred
    if inferred.shape is None or len(inferred.shape) != len(declared.shape):
        return declared if inferred.shape is None else inferred
    dims = tuple(i if (i.value is not None or d.value is None) else d
                 for d, i in zip(declared.shape, inferred.shape))
    return TensorType(inferred.elem_type or declared.elem_type, dims)


def stats_changed(stats: dict[str, int | float]) -> bool:
    """Whether a pass's statistics record a change (homec.pipeline.is_modified)."""
    return any(bool(v) for k, v in stats.items()
               if isinstance(v, (int, float)) and not k.startswith(OBSERVATION_PREFIXES))


# Statistic keys that describe what a pass saw or declined, not changes; the same list as
# homec.pipeline.INFORMATIONAL_PREFIXES.
OBSERVATION_PREFIXES = ("skipped", "refused", "kept", "checked", "seen", "candidates", "iterations")


def constant_node_data(node: Node) -> Tensor | SparseTensor | np.ndarray | None:
    """The value of a Constant node (tensor, sparse tensor or a numpy array for the scalar
    and list attributes), or None for strings and attribute references."""
    if len(node.attrs) != 1:
        return None
    (a,) = node.attrs.values()
    if a.ref_attr_name:
        return None
    v = a.value
    if a.name == "value" and a.type == AttrType.TENSOR:
        return v  # the node goes away, so its tensor (encoding kept) moves to the initializer
    if a.name == "sparse_value" and a.type == AttrType.SPARSE_TENSOR:
        return v
    if a.name == "value_float" and a.type == AttrType.FLOAT:
        return np.array(v, dtype=np.float32)
    if a.name == "value_floats" and a.type == AttrType.FLOATS:
        return np.array(list(v), dtype=np.float32)
    if a.name == "value_int" and a.type == AttrType.INT:
        return np.array(v, dtype=np.int64)
    if a.name == "value_ints" and a.type == AttrType.INTS:
        return np.array(list(v), dtype=np.int64)
    return None  # strings: left as Constant nodes



def constant_array(v: Value | None) -> np.ndarray | None:
    """The data of a constant initializer (`const_of`) or of a Constant node's output (what
    un-cleaned exports and onnx's opset converter write), else None."""
    arr = const_of(v)
    if arr is not None or v is None:
        return arr
    node = v.producer
    if node is None or node.op_type != "Constant" or node.domain != "":
        return None
    data = constant_node_data(node)
    if isinstance(data, Tensor):
        return data.numpy()
    return data if isinstance(data, np.ndarray) else None

def upgrade_opset(graph: Graph, ctx, version: int, *, purpose: str, hint: str) -> None:
    """Convert the model to default-domain opset `version` (onnx's version converter) and
    check that onnxruntime's outputs did not move, on up to 2 calibration samples or one
    seeded random input (float_refold tolerance).

    Raises OpsetUpgradeError: `.stage` "check" (onnxruntime cannot run the model as it is;
    graph untouched), "convert" (the converter refuses; graph untouched) or "changed" (the
    converted model runs differently or not at all; `hint` says what to do instead).
    """
    from homec.onnx_io import convert_opset
    from homec.registry import Tolerance
    from homec.verify import compare_outputs, random_inputs, run_model

    before = graph.to_onnx()
    names = [o.name for o in before.graph.output]
    if ctx.calib is not None and len(ctx.calib):
        samples = [dict(s) for s in list(ctx.calib)[:2]]
    else:
        samples = [random_inputs(before, seed=ctx.seed)]
    try:
        reference = [run_model(before, feeds) for feeds in samples]
    except UnsupportedError as e:
        raise OpsetUpgradeError("check", f"the conversion to opset {version} ({purpose}) cannot "
                                f"be checked: {e.message}") from None
    try:
        convert_opset(graph, version)
    except UnsupportedError as e:
        raise OpsetUpgradeError("convert", e.message) from None
    after = graph.to_onnx()
    for feeds, ref in zip(samples, reference):
        try:
            got = run_model(after, feeds)
        except UnsupportedError as e:
            raise OpsetUpgradeError("changed", f"converting the model to opset {version} "
                                    f"({purpose}) broke it: {e.message}; {hint}") from None
        cmp = compare_outputs(names, ref, got, Tolerance.float_refold())
        if not cmp.ok:
            raise OpsetUpgradeError("changed", f"converting the model to opset {version} "
                                    f"({purpose}) changed its outputs ({cmp.describe()}); {hint}")


class OpsetUpgradeError(UnsupportedError):
    """An opset conversion that could not be done or checked (see `upgrade_opset`)."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


# ---------------------------------------------------------------------------------------
# Calibration samples (passes that learn from data: pruning, low-rank factorization)
# ---------------------------------------------------------------------------------------


def calibration_samples(ctx, limit: int) -> list[dict]:
    """The first `limit` calibration samples (feeds by input name), or [] without --calib."""
    if ctx.calib is None or not len(ctx.calib):
        return []
    return [dict(s) for s in list(ctx.calib)[:limit]]


def smallest_samples(samples: list[dict], n: int) -> list[dict]:
    """The n samples with the fewest input elements (ties: the earlier one). Sensitivity
    analyses run the model many times, and for fully convolutional models the small
    inputs tell the same story faster."""
    order = sorted(range(len(samples)),
                   key=lambda i: (sum(int(np.asarray(v).size) for v in samples[i].values()), i))
    return [samples[i] for i in order[:n]]


def sample_input_shapes(graph: Graph, samples: list[dict]) -> dict[str, tuple[int, ...]]:
    """The first sample's shapes of the graph's real inputs: pins the dims shape inference
    (and the cost counts) need."""
    names = {v.name for v in graph.inputs if not v.is_initializer}
    if samples:
        return {k: tuple(np.asarray(v).shape) for k, v in samples[0].items() if k in names}
    return {}
