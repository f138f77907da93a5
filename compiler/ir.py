"""The graph IR: `Graph`, `Node`, `Value` over a private `networkx.MultiDiGraph`.

Passes edit graphs only through the methods here. The networkx graph mirrors the
producer -> consumer relation between nodes (edge key = consumer input slot), and
`Value.uses` is the authoritative use list; `Graph.verify()` checks both agree.

Values are SSA: each has at most one producer (a node output) or is a graph input or an
initializer (a constant backed by a `Tensor`). An omitted optional input or output is
`None` in `Node.inputs` / `Node.outputs`.

Control-flow subgraphs (If/Loop/Scan bodies) are nested `Graph`s whose nodes may read
values of an enclosing graph ("captures"); the enclosing node then depends on those values
and is ordered after their producers.

Iteration order is deterministic: topological, ties broken by the original position in the
file (new nodes take the position of the node they were inserted beside).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import functools
import heapq
import math
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import networkx as nx
import numpy as np

from homec.errors import IRError

@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building or rewriting a large graph.

    Creating hundreds of thousands of small objects triggers repeated full collections that
    make graph work super-linear in the node count; collection resumes (and catches up)
    afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dim:
    """One dimension: a static size, a symbolic name, or unknown (both None)."""

    value: int | None = None
    param: str | None = None
    denotation: str = ""

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def of(value: int) -> Dim:
        """A static dim (shared instances: Dim is immutable)."""
        return Dim(value=value)

    @property
    def is_static(self) -> bool:
        # paddle2onnx writes dim_value -1 for a dynamic dim (PP-OCR cls): not a size
        return self.value is not None and self.value >= 0

    def __str__(self) -> str:
        if self.value is not None:
            return str(self.value)
        return self.param if self.param else "?"


@dataclasses.dataclass(frozen=True)
class TensorType:
    elem_type: int  # onnx.TensorProto.DataType value
    shape: tuple[Dim, ...] | None = None  # None: rank unknown
    denotation: str = ""
    sparse: bool = False  # a sparse_tensor_type

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def static_shape(self) -> tuple[int, ...] | None:
        """The shape as ints when every dim is static, else None."""
        if self.shape is None or not all(d.is_static for d in self.shape):
            return None
        return tuple(d.value for d in self.shape)  # type: ignore[misc]


@dataclasses.dataclass(frozen=True)
class SequenceType:
    elem: Type | None
    denotation: str = ""


@dataclasses.dataclass(frozen=True)
class OptionalType:
    elem: Type | None
    denotation: str = ""


@dataclasses.dataclass(frozen=True)
class MapType:
    key_type: int
    value: Type | None
    denotation: str = ""


@dataclasses.dataclass(frozen=True)
class OpaqueType:
    domain: str = ""
    name: str = ""
    denotation: str = ""


@dataclasses.dataclass(frozen=True)
class EmptyType:
    """A TypeProto with no type set (allowed in some producers' value_info)."""

    denotation: str = ""


Type = TensorType | SequenceType | OptionalType | MapType | OpaqueType | EmptyType


# ---------------------------------------------------------------------------------------
# Tensors (constant data)
# ---------------------------------------------------------------------------------------


class Tensor:
    """Constant tensor data, decoded to numpy lazily.

    A tensor loaded from a file keeps its encoded form so an untouched tensor is emitted
    bit for bit; assigning new data (`Tensor.from_numpy`) drops it.
    """

    __slots__ = ("name", "dtype", "dims", "doc_string", "metadata", "_array", "_encoded", "_decode")

    def __init__(
        self,
        name: str,
        dtype: int,
        dims: Sequence[int],
        *,
        array: np.ndarray | None = None,
        encoded: bytes | None = None,
        decode: Callable[[bytes], np.ndarray] | None = None,
        doc_string: str = "",
        metadata: Sequence[tuple[str, str]] = (),
    ):
        if array is None and encoded is None:
            raise IRError(f"tensor {name!r} has neither data nor an encoding")
        self.name = name
        self.dtype = int(dtype)
        self.dims = tuple(int(d) for d in dims)
        self.doc_string = doc_string
        self.metadata = list(metadata)
        self._array = array
        self._encoded = encoded
        self._decode = decode

    @classmethod
    def from_numpy(cls, array: np.ndarray, name: str = "") -> Tensor:
        from homec.dtypes import onnx_dtype_of

        array = np.asarray(array)
        return cls(name, onnx_dtype_of(array.dtype), array.shape, array=array)

    def numpy(self) -> np.ndarray:
        """The data as a numpy array (read-only: build a new Tensor to change it)."""
        if self._array is None:
            assert self._encoded is not None and self._decode is not None
            arr = self._decode(self._encoded)
            arr.flags.writeable = False
            self._array = arr
        return self._array

    @property
    def encoded(self) -> bytes | None:
        """The original encoding (opaque bytes), if the data was never replaced."""
        return self._encoded

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dims

    @property
    def size(self) -> int:
        return math.prod(self.dims)

    @property
    def nbytes(self) -> int:
        from homec.dtypes import itemsize_bits

        return (self.size * itemsize_bits(self.dtype) + 7) // 8

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, dtype={self.dtype}, dims={self.dims})"


class SparseTensor:
    """A sparse tensor (values + indices), kept as two Tensors."""

    __slots__ = ("values", "indices", "dims")

    def __init__(self, values: Tensor, indices: Tensor, dims: Sequence[int]):
        self.values = values
        self.indices = indices
        self.dims = tuple(int(d) for d in dims)

    @property
    def name(self) -> str:
        return self.values.name


# ---------------------------------------------------------------------------------------
# Attributes
# ---------------------------------------------------------------------------------------


class AttrType(enum.IntEnum):
    """Mirrors onnx.AttributeProto.AttributeType."""

    UNDEFINED = 0
    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    SPARSE_TENSOR = 11
    TYPE_PROTO = 13
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSORS = 12
    TYPE_PROTOS = 14


@dataclasses.dataclass
class Attr:
    """A node attribute. Strings are kept as bytes (ONNX strings need not be UTF-8)."""

    name: str
    type: AttrType
    value: Any
    ref_attr_name: str = ""  # in function bodies: refers to the caller's attribute
    doc_string: str = ""
    # Source-format details the IR does not model (e.g. fields explicitly set to their
    # default), kept so that an untouched model is emitted unchanged.
    opaque: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def infer(cls, name: str, value: Any) -> Attr:
        """Build an attribute from a Python value, inferring its ONNX type."""
        if isinstance(value, bool):
            return cls(name, AttrType.INT, int(value))
        if isinstance(value, (int, np.integer)):
            return cls(name, AttrType.INT, int(value))
        if isinstance(value, (float, np.floating)):
            return cls(name, AttrType.FLOAT, float(value))
        if isinstance(value, str):
            return cls(name, AttrType.STRING, value.encode())
        if isinstance(value, bytes):
            return cls(name, AttrType.STRING, value)
        if isinstance(value, Tensor):
            return cls(name, AttrType.TENSOR, value)
        if isinstance(value, np.ndarray):
            return cls(name, AttrType.TENSOR, Tensor.from_numpy(value))
        if isinstance(value, Graph):
            return cls(name, AttrType.GRAPH, value)
        if isinstance(value, (list, tuple)):
            items = list(value)
            if not items:
                raise IRError(f"attribute {name!r}: cannot infer the type of an empty list")
            if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
                return cls(name, AttrType.INTS, [int(v) for v in items])
            if all(isinstance(v, (int, float, np.integer, np.floating)) for v in items):
                return cls(name, AttrType.FLOATS, [float(v) for v in items])
            if all(isinstance(v, (str, bytes)) for v in items):
                return cls(name, AttrType.STRINGS, [v.encode() if isinstance(v, str) else v for v in items])
            if all(isinstance(v, Tensor) for v in items):
                return cls(name, AttrType.TENSORS, items)
            if all(isinstance(v, Graph) for v in items):
                return cls(name, AttrType.GRAPHS, items)
        raise IRError(f"attribute {name!r}: unsupported value {value!r}")

    def python_value(self) -> Any:
        """The value in plain Python form: str for strings, tuple for lists."""
        if self.type == AttrType.STRING:
            return _decode_str(self.value)
        if self.type == AttrType.STRINGS:
            return tuple(_decode_str(v) for v in self.value)
        if self.type in (AttrType.INTS, AttrType.FLOATS, AttrType.TENSORS, AttrType.GRAPHS,
                         AttrType.SPARSE_TENSORS, AttrType.TYPE_PROTOS):
            return tuple(self.value)
        return self.value


def _decode_str(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


# ---------------------------------------------------------------------------------------
# Values and nodes
# ---------------------------------------------------------------------------------------


class Value:
    """A named SSA value: a graph input, an initializer, or a node output."""

    __slots__ = ("name", "type", "doc_string", "metadata", "graph", "producer", "output_index",
                 "const", "_uses", "_opaque", "_output_of", "__weakref__")

    def __init__(self, name: str, type: Type | None = None):
        self.name = name
        self.type = type
        self.doc_string = ""
        self.metadata: list[tuple[str, str]] = []
        self.graph: Graph | None = None  # the graph whose scope defines it
        self.producer: Node | None = None
        self.output_index: int = -1
        self.const: Tensor | SparseTensor | None = None  # set for initializers
        self._uses: dict[tuple[int, int], tuple[Node, int]] = {}  # (node uid, slot) -> (node, slot)
        self._opaque: dict[str, Any] = {}  # source-format details, for lossless emission
        self._output_of: dict[int, Graph] = {}  # id(graph) -> graph listing this as an output

    @property
    def uses(self) -> list[tuple[Node, int]]:
        """(consumer node, input slot) pairs, in deterministic order."""
        return sorted(self._uses.values(), key=lambda u: (u[0]._uid, u[1]))

    @property
    def users(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(node._uid, node)
        return list(seen.values())

    @property
    def is_initializer(self) -> bool:
        return self.const is not None

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and self in self.graph._input_set

    @property
    def is_overridable(self) -> bool:
        """An initializer a caller may override by feeding it: listed as a graph input in a
        model of IR version 4 or later (before IR 4 every initializer had to be listed, so
        the listing made none of them overridable)."""
        if self.const is None or not self.is_graph_input:
            return False
        model = self.graph.root.model if self.graph is not None else None
        return model is None or model.ir_version >= 4

    @property
    def is_graph_output(self) -> bool:
        """An output of its graph, or of a nested graph returning it (an If branch
        returning an outer value)."""
        return bool(self._output_of)

    def tensor_type(self) -> TensorType | None:
        return self.type if isinstance(self.type, TensorType) else None

    def __repr__(self) -> str:
        return f"Value({self.name!r})"


class Node:
    """An operator application. Edit through `Graph` methods or the setters here."""

    _uid_counter = itertools.count()

    __slots__ = ("op_type", "domain", "overload", "name", "doc_string", "metadata", "attrs",
                 "graph", "_inputs", "_outputs", "_uid", "_opaque", "__weakref__")

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        outputs: Sequence[Value | str | None] = (),
        *,
        domain: str = "",
        name: str = "",
        attrs: Iterable[Attr] | dict[str, Any] | None = None,
        overload: str = "",
        doc_string: str = "",
    ):
        self.op_type = op_type
        self.domain = normalize_domain(domain)
        self.overload = overload
        self.name = name
        self.doc_string = doc_string
        self.metadata: list[tuple[str, str]] = []
        self.attrs: dict[str, Attr] = {}
        if isinstance(attrs, dict):
            for k, v in attrs.items():
                self.attrs[k] = v if isinstance(v, Attr) else Attr.infer(k, v)
        elif attrs is not None:
            for a in attrs:
                self.attrs[a.name] = a
        self.graph: Graph | None = None
        self._inputs: list[Value | None] = list(inputs)
        self._outputs: list[Value | None] = [Value(o) if isinstance(o, str) else o for o in outputs]
        self._uid = next(Node._uid_counter)
        self._opaque: dict[str, Any] = {}  # fields the IR does not model, kept for emission

    # -- inputs / outputs ---------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        return tuple(self._outputs)

    def set_input(self, slot: int, value: Value | None) -> None:
        if self.graph is None:
            while len(self._inputs) <= slot:
                self._inputs.append(None)
            self._inputs[slot] = value
        else:
            self.graph._set_input(self, slot, value)

    def input_const(self, slot: int) -> np.ndarray | None:
        """The constant array at input `slot` (an initializer), or None."""
        if slot >= len(self._inputs) or self._inputs[slot] is None:
            return None
        v = self._inputs[slot]
        assert v is not None
        if isinstance(v.const, Tensor):
            return v.const.numpy()
        return None

    # -- attributes -----------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        """Typed attribute access: int, float, str, tuple, Tensor, Graph, or `default`."""
        a = self.attrs.get(name)
        if a is None:
            return default
        return a.python_value()

    def set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = value if isinstance(value, Attr) else Attr.infer(name, value)
        if self.graph is not None and self.attrs[name].type in (AttrType.GRAPH, AttrType.GRAPHS):
            self.graph._owners_cache = None

    def subgraphs(self) -> list[Graph]:
        out: list[Graph] = []
        for a in self.attrs.values():
            if a.type == AttrType.GRAPH:
                out.append(a.value)
            elif a.type == AttrType.GRAPHS:
                out.extend(a.value)
        return out

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    def __repr__(self) -> str:
        return f"Node({self.qualified_op}, name={self.name!r})"


def normalize_domain(domain: str) -> str:
    """'' and 'ai.onnx' are the same default domain; homec uses ''."""
    return "" if domain in ("", "ai.onnx") else domain


# ---------------------------------------------------------------------------------------
# Functions and model-level properties
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Function:
    """A model-local function. `body` holds its nodes; its inputs/outputs are untyped."""

    name: str
    domain: str
    body: Graph
    attribute_names: list[str] = dataclasses.field(default_factory=list)
    attribute_defaults: list[Attr] = dataclasses.field(default_factory=list)
    opset_imports: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    overload: str = ""
    doc_string: str = ""
    metadata: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    opaque: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain, self.name, self.overload)


@dataclasses.dataclass
class ModelInfo:
    """Model-level properties of a top-level graph (everything of ModelProto but the graph)."""

    ir_version: int = 10
    opset_imports: list[tuple[str, int]] = dataclasses.field(default_factory=lambda: [("", 21)])
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    functions: list[Function] = dataclasses.field(default_factory=list)
    opaque: dict[str, Any] = dataclasses.field(default_factory=dict)  # training_info, configuration
    source_path: str | None = None

    def opset(self, domain: str = "") -> int | None:
        domain = normalize_domain(domain)
        for d, v in self.opset_imports:
            if normalize_domain(d) == domain:
                return v
        return None

    def set_opset(self, domain: str, version: int) -> None:
        domain = normalize_domain(domain)
        for i, (d, _) in enumerate(self.opset_imports):
            if normalize_domain(d) == domain:
                self.opset_imports[i] = (d, version)
                return
        self.opset_imports.append((domain, version))


# ---------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------


class Graph:
    """A computation graph. Nodes are kept in a private networkx.MultiDiGraph."""

    def __init__(self, name: str = "", *, parent: Graph | None = None):
        self.name = name
        self.doc_string = ""
        self.metadata: list[tuple[str, str]] = []
        self.parent = parent  # the enclosing graph of a subgraph
        self.model: ModelInfo | None = None  # set on top-level graphs
        self._nx = nx.MultiDiGraph()
        self._nodes: dict[int, Node] = {}  # uid -> node
        self._position: dict[int, tuple[int, ...]] = {}  # uid -> ordering key
        self._next_position = 0
        self._values: dict[str, Value] = {}
        self._inputs: list[Value] = []
        self._input_set: set[Value] = set()
        self._outputs: list[Value] = []
        self._output_set: set[Value] = set()
        self._initializers: dict[str, Value] = {}
        self._value_info_names: list[str] = []  # which values carried value_info, in order
        # value_info / output descriptions kept verbatim where they differ from the value's
        # own record (set by the loader, read by the emitter).
        self._declared: dict[tuple, tuple] = {}
        self._opaque: dict[str, Any] = {}  # quantization_annotation etc., kept for emission
        self._order_cache: list[Node] | None = None
        self._name_counter = itertools.count()
        self._name_cache: set[str] | None = None  # every name in the tree (root only), lazily
        self._owners_cache: list[Node] | None = None  # nodes holding subgraphs

    def adopt(self, other: Graph) -> None:
        """Take over the contents of the top-level graph `other`, which must not be used after.

        For whole-model rewrites done outside the IR (the onnx version converter, see
        `homec.onnx_io.convert_opset`): the caller's `Graph` object stays valid, only what it
        holds changes.
        """
        if self.parent is not None or other.parent is not None:
            raise IRError("adopt() replaces top-level graphs only")
        old_id, new_id = id(other), id(self)
        self.__dict__.update(other.__dict__)
        for node in self._nodes.values():
            node.graph = self
            for sub in node.subgraphs():
                if sub.parent is other:
                    sub.parent = self
        for value in self._values.values():
            if value.graph is other:
                value.graph = self
            if old_id in value._output_of:
                del value._output_of[old_id]
                value._output_of[new_id] = self
        other.__dict__.clear()

    # -- read access ----------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    @property
    def initializers(self) -> dict[str, Value]:
        """Initializer values by name (a copy; edit with add/remove_initializer)."""
        return dict(self._initializers)

    @property
    def nodes(self) -> list[Node]:
        """Nodes in deterministic topological order."""
        if self._order_cache is None:
            self._order_cache = self._topological_order()
        return list(self._order_cache)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def value(self, name: str) -> Value | None:
        """The value named `name` visible in this scope (this graph, then enclosing ones)."""
        g: Graph | None = self
        while g is not None:
            v = g._values.get(name)
            if v is not None:
                return v
            g = g.parent
        return None

    def values(self) -> list[Value]:
        """Values defined in this graph (inputs, initializers, node outputs)."""
        return list(self._values.values())

    def all_nodes(self) -> Iterator[Node]:
        """Nodes of this graph and of every nested subgraph, depth first."""
        owners = set(id(n) for n in self.subgraph_owners())
        for node in self.nodes:
            yield node
            if owners and id(node) in owners:
                for sg in node.subgraphs():
                    yield from sg.all_nodes()

    def subgraph_owners(self) -> list[Node]:
        """Nodes of this graph holding subgraphs (If/Loop/Scan...), in topological order."""
        if self._owners_cache is None:
            self._owners_cache = [n for n in self.nodes if n.subgraphs()]
        return list(self._owners_cache)

    def subgraphs(self) -> Iterator[Graph]:
        """This graph and every nested subgraph, parents before children."""
        yield self
        for n in self.subgraph_owners():
            for sg in n.subgraphs():
                yield from sg.subgraphs()

    def opset(self, domain: str = "") -> int | None:
        root = self.root
        return root.model.opset(domain) if root.model else None

    @property
    def root(self) -> Graph:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def fresh_name(self, hint: str) -> str:
        """A value/node name not used anywhere in this graph tree (amortized O(1))."""
        root = self.root
        if root._name_cache is None:
            root._name_cache = root._all_value_names()
        names = root._name_cache
        while True:
            cand = f"{hint}__{next(root._name_counter)}"
            if cand not in names:
                names.add(cand)
                return cand

    def unique_name(self, hint: str) -> str:
        """`hint` itself when no value of the tree is named so yet, else `fresh_name(hint)`:
        short value names where possible, for names a pass derives from existing ones.
        (For node names keep `fresh_name`: this cache does not hold node names.)"""
        root = self.root
        if root._name_cache is None:
            root._name_cache = root._all_value_names()
        if hint and hint not in root._name_cache:
            root._name_cache.add(hint)
            return hint
        return self.fresh_name(hint)

    def _all_value_names(self) -> set[str]:
        names = set(self._values)
        for n in self._nodes.values():
            for sg in n.subgraphs():
                names |= sg._all_value_names()
        return names

    # -- building -------------------------------------------------------------------------
    def add_input(self, value: Value | str, type: Type | None = None) -> Value:
        v = self._define(value, type)
        self._inputs.append(v)
        self._input_set.add(v)
        return v

    def add_initializer(self, name: str, data: Tensor | SparseTensor | np.ndarray) -> Value:
        """Add a constant value backed by `data` (a numpy array is wrapped in a Tensor)."""
        if isinstance(data, np.ndarray) or np.isscalar(data):
            data = Tensor.from_numpy(np.asarray(data), name)
        if isinstance(data, Tensor):
            data.name = name
        v = self._values.get(name)
        if v is not None and v.is_graph_input and v.const is None:
            # an initializer for a graph input: the input's default value (ONNX IR < 4 style)
            pass
        else:
            v = self._define(name, None)
        v.const = data
        self._initializers[name] = v
        self._invalidate()
        return v

    def remove_initializer(self, value: Value) -> None:
        if value.name not in self._initializers:
            raise IRError(f"{value.name!r} is not an initializer of graph {self.name!r}")
        if value._uses:
            raise IRError(f"cannot remove initializer {value.name!r}: still used by "
                          f"{value.users[0]!r}; replace its uses first")
        if value.is_graph_output:
            raise IRError(f"cannot remove initializer {value.name!r}: it is a graph output")
        del self._initializers[value.name]
        value.const = None
        if not value.is_graph_input:
            del self._values[value.name]
            value.graph = None

    def set_outputs(self, outputs: Sequence[Value]) -> None:
        for v in outputs:
            if self.value(v.name) is not v:
                raise IRError(f"graph output {v.name!r} is not defined in graph {self.name!r}")
        self._assign_outputs(list(outputs))

    def _assign_outputs(self, outputs: list[Value]) -> None:
        for v in self._outputs:
            v._output_of.pop(id(self), None)
        self._outputs = outputs
        self._output_set = set(outputs)
        for v in outputs:
            v._output_of[id(self)] = self

    def add_output(self, value: Value) -> None:
        self.set_outputs([*self._outputs, value])

    def set_inputs(self, inputs: Sequence[Value]) -> None:
        for v in inputs:
            if v.graph is not self:
                raise IRError(f"graph input {v.name!r} does not belong to graph {self.name!r}")
        self._inputs = list(inputs)
        self._input_set = set(inputs)

    def set_type(self, value: Value, type: Type | None) -> None:
        """Set `value`'s type so the emitted model records it: graph inputs and outputs carry
        their types anyway; an intermediate value is also listed in value_info."""
        if value.graph is not self:
            raise IRError(f"set_type(): {value.name!r} is not defined in graph {self.name!r}")
        value.type = type
        for key in [k for k in self._declared if k[0] == "vi" and k[1] == value.name]:
            del self._declared[key]  # a verbatim description would shadow the new type
        if (type is not None and value.producer is not None and value.name
                and not value.is_graph_output and value.name not in self._value_info_names):
            self._value_info_names.append(value.name)

    def _define(self, value: Value | str, type: Type | None) -> Value:
        v = Value(value, type) if isinstance(value, str) else value
        if v.name and v.name in self._values and self._values[v.name] is not v:
            raise IRError(f"value {v.name!r} is defined twice in graph {self.name!r}; "
                          "every value must have exactly one definition")
        if v.graph is not None and v.graph is not self:
            raise IRError(f"value {v.name!r} already belongs to graph {v.graph.name!r}")
        v.graph = self
        if v.name:
            self._values[v.name] = v
            root = self.root
            if root._name_cache is not None:
                root._name_cache.add(v.name)
        return v

    def append(self, node: Node) -> Node:
        """Add `node` after every existing node (in original-position order)."""
        return self._add_node(node, (self._bump_position(), 0))

    def insert(self, node: Node, *, before: Node | None = None, after: Node | None = None) -> Node:
        """Add `node` positioned just before or after an anchor node (ordering ties only;
        dependencies always win)."""
        if (before is None) == (after is None):
            raise IRError("insert() needs exactly one of before= or after=")
        anchor = before if before is not None else after
        assert anchor is not None
        if anchor.graph is not self:
            raise IRError(f"insert(): anchor {anchor!r} is not in graph {self.name!r}")
        base = self._position[anchor._uid]
        # Every key ends in 0, so keys compare lexicographically as
        # (..., p, -1, k, 0) < (..., p, 0) < (..., p, 1, k, 0) < (..., p + 1, 0).
        key = (*base[:-1], -1 if before is not None else 1, self._bump_position(), 0)
        return self._add_node(node, key)

    def _bump_position(self) -> int:
        self._next_position += 1
        return self._next_position

    def _add_node(self, node: Node, key: tuple[int, ...]) -> Node:
        if node.graph is not None:
            raise IRError(f"{node!r} already belongs to a graph")
        node.graph = self
        self._nodes[node._uid] = node
        self._position[node._uid] = key
        self._nx.add_node(node._uid)
        for i, out in enumerate(node._outputs):
            if out is None:
                continue
            if out.producer is not None:
                raise IRError(f"value {out.name!r} already has producer {out.producer!r}; "
                              f"{node!r} cannot produce it too")
            self._define(out, out.type)
            out.producer = node
            out.output_index = i
        for slot, v in enumerate(node._inputs):
            if v is not None:
                self._link(v, node, slot)
        for sg in node.subgraphs():
            sg.parent = self
            self._link_captures(node, sg)
            self.root._name_cache = None  # names inside the new subgraph are not cached
        self._invalidate()
        return node

    def _link(self, value: Value, node: Node, slot: int) -> None:
        value._uses[(node._uid, slot)] = (node, slot)
        prod = value.producer
        if prod is not None and prod.graph is self:
            self._nx.add_edge(prod._uid, node._uid, key=slot)
        elif prod is not None:
            # Captured from an enclosing scope: the enclosing node containing `self`
            # must be ordered after the producer.
            self._add_capture_edge(value)

    def _unlink(self, value: Value, node: Node, slot: int) -> None:
        value._uses.pop((node._uid, slot), None)
        prod = value.producer
        if prod is not None and prod.graph is self:
            if self._nx.has_edge(prod._uid, node._uid, key=slot):
                self._nx.remove_edge(prod._uid, node._uid, key=slot)

    def _add_capture_edge(self, value: Value) -> None:
        # Walk up from this subgraph to the scope defining `value`'s producer and add an
        # ordering edge from that producer to the node (in that scope) that owns us.
        g: Graph = self
        while g.parent is not None:
            owner = g._owner_node()
            parent = g.parent
            if owner is None:
                return
            if value.producer is not None and value.producer.graph is parent:
                parent._nx.add_edge(value.producer._uid, owner._uid, key=("capture", value.name))
                parent._invalidate()
                return
            g = parent

    def _owner_node(self) -> Node | None:
        if self.parent is None:
            return None
        for n in self.parent._nodes.values():
            if any(sg is self for sg in n.subgraphs()):
                return n
        return None

    def _link_captures(self, owner: Node, sg: Graph) -> None:
        for inner in sg._nodes.values():
            for v in inner._inputs:
                if v is not None and v.producer is not None and v.producer.graph is self:
                    self._nx.add_edge(v.producer._uid, owner._uid, key=("capture", v.name))
            for ssg in inner.subgraphs():
                self._link_captures(owner, ssg)
        for v in sg._outputs:
            if v.graph is not sg and v.producer is not None and v.producer.graph is self:
                self._nx.add_edge(v.producer._uid, owner._uid, key=("capture", v.name))

    def _set_input(self, node: Node, slot: int, value: Value | None) -> None:
        while len(node._inputs) <= slot:
            node._inputs.append(None)
        old = node._inputs[slot]
        if old is value:
            return
        if old is not None:
            self._unlink(old, node, slot)
        node._inputs[slot] = value
        if value is not None:
            self._link(value, node, slot)
        self._invalidate()

    def set_inputs_of(self, node: Node, inputs: Sequence[Value | None]) -> None:
        """Replace all inputs of `node` (the list may be shorter or longer than before)."""
        for slot, old in enumerate(node._inputs):
            if old is not None:
                self._unlink(old, node, slot)
        node._inputs = list(inputs)
        for slot, v in enumerate(node._inputs):
            if v is not None:
                self._link(v, node, slot)
        self._invalidate()

    # -- rewriting ------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value, *, include_outputs: bool = True) -> int:
        """Make every consumer of `old` read `new` instead (in subgraphs too).

        With `include_outputs`, a graph output `old` is replaced by `new` in the output list;
        the output keeps its name only if the caller renames `new` (see `rename_value`).
        Returns the number of uses rewritten.
        """
        if old is new:
            return 0
        if new.type is None and old.type is not None:
            new.type = old.type  # a replacement has the type of what it replaces
        count = 0
        for node, slot in old.uses:
            assert node.graph is not None
            node.graph._set_input(node, slot, new)
            count += 1
        if include_outputs:
            for g in list(old._output_of.values()):
                g._assign_outputs([new if v is old else v for v in g._outputs])
                count += 1
                if g is not new.graph and new.producer is not None and g.parent is not None:
                    g._add_capture_edge(new)
        return count

    def rename_value(self, value: Value, new_name: str) -> None:
        """Rename a value (e.g. so a graph output keeps its public name after a rewrite)."""
        g = value.graph
        if g is None:
            value.name = new_name
            return
        if new_name in g._values and g._values[new_name] is not value:
            raise IRError(f"cannot rename {value.name!r} to {new_name!r}: the name is taken")
        if value.name in g._values:
            del g._values[value.name]
        if value.name in g._initializers:
            del g._initializers[value.name]
            g._initializers[new_name] = value
            if isinstance(value.const, Tensor):
                value.const.name = new_name
        g._value_info_names = [new_name if n == value.name else n for n in g._value_info_names]
        value.name = new_name
        g._values[new_name] = value
        if g.root._name_cache is not None:
            g.root._name_cache.add(new_name)

    def remove_nodes(self, nodes: Iterable[Node]) -> None:
        """Remove nodes whose outputs are no longer used.

        Refuses (IRError) when an output is still read by a node outside `nodes` or is a
        graph output: replace those uses first (`replace_all_uses`).
        """
        doomed = list(nodes)
        doomed_ids = {n._uid for n in doomed}
        for n in doomed:
            if n.graph is not self:
                raise IRError(f"remove_nodes(): {n!r} is not in graph {self.name!r}")
            for out in n._outputs:
                if out is None:
                    continue
                for user, _ in out._uses.values():
                    if user._uid not in doomed_ids and not _inside(user, doomed_ids):
                        raise IRError(f"cannot remove {n!r}: its output {out.name!r} is still "
                                      f"used by {user!r}; replace its uses first")
                if any(not _graph_inside(g, doomed_ids) for g in out._output_of.values()):
                    raise IRError(f"cannot remove {n!r}: its output {out.name!r} is a graph "
                                  "output; replace it in the outputs first")
        for n in doomed:
            for slot, v in enumerate(n._inputs):
                if v is not None:
                    self._unlink(v, n, slot)
            for sg in n.subgraphs():
                sg._detach_captures()
        for n in doomed:
            for out in n._outputs:
                if out is None:
                    continue
                out.producer = None
                if self._values.get(out.name) is out:
                    del self._values[out.name]
                out.graph = None
            self._nx.remove_node(n._uid)
            del self._nodes[n._uid]
            del self._position[n._uid]
            n.graph = None
        self._invalidate()

    def _detach_captures(self) -> None:
        for v in self._outputs:
            v._output_of.pop(id(self), None)
        for n in self._nodes.values():
            for slot, v in enumerate(n._inputs):
                if v is not None and v.graph is not self:
                    v._uses.pop((n._uid, slot), None)
            for sg in n.subgraphs():
                sg._detach_captures()

    def remove_unused_values(self) -> int:
        """Drop initializers nobody reads (not graph inputs or outputs). Returns the count."""
        removed = 0
        for v in list(self._initializers.values()):
            if not v._uses and not v.is_graph_output and not v.is_graph_input:
                self.remove_initializer(v)
                removed += 1
        return removed

    # -- ordering -------------------------------------------------------------------------
    def _invalidate(self) -> None:
        self._owners_cache = None
        g: Graph | None = self
        while g is not None:
            g._order_cache = None
            g = g.parent

    def _topological_order(self) -> list[Node]:
        """Kahn's algorithm, always taking the ready node with the smallest position
        (networkx's lexicographical sort does the same, several times slower)."""
        pos = self._position
        succ, pred = self._nx._succ, self._nx._pred  # our own private graph's adjacency
        indeg = {uid: len(p) for uid, p in pred.items()}
        ready = [(pos[uid], uid) for uid, d in indeg.items() if d == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        nodes = self._nodes
        while ready:
            _, uid = heapq.heappop(ready)
            order.append(nodes[uid])
            for v in succ[uid]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    heapq.heappush(ready, (pos[v], v))
        if len(order) != len(nodes):
            cycle = nx.find_cycle(self._nx)
            names = " -> ".join(repr(self._nodes[u]) for u, *_ in cycle)
            raise IRError(f"graph {self.name!r} has a cycle: {names}")
        return order

    def position(self, node: Node) -> tuple[int, ...]:
        return self._position[node._uid]

    # -- verification ---------------------------------------------------------------------
    def verify(self) -> None:
        """Check every invariant; raise IRError naming the offending node and the fix."""
        problems: list[str] = []
        self._verify_into(problems)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IRError(problems[0] + more)

    def _verify_into(self, problems: list[str]) -> None:
        where = f"graph {self.name!r}"
        if not nx.is_directed_acyclic_graph(self._nx):
            cycle = nx.find_cycle(self._nx)
            names = " -> ".join(repr(self._nodes[u]) for u, *_ in cycle)
            problems.append(f"{where}: cycle {names}; a value cannot depend on itself")
            return
        if set(self._nx.nodes) != set(self._nodes):
            problems.append(f"{where}: node table and networkx graph disagree (edit nodes "
                            "through Graph methods only)")
        produced: dict[str, Node] = {}
        for node in self._nodes.values():
            if node.graph is not self:
                problems.append(f"{node!r} is listed in {where} but points to another graph")
            for i, out in enumerate(node._outputs):
                if out is None:
                    continue
                if out.producer is not node or out.output_index != i:
                    problems.append(f"{node!r}: output {i} {out.name!r} does not record its "
                                    "producer; add nodes with Graph.append/insert")
                if out.name:
                    if out.name in produced and produced[out.name] is not node:
                        problems.append(f"value {out.name!r} has two producers: "
                                        f"{produced[out.name]!r} and {node!r}")
                    produced[out.name] = node
                    if out.name in self._initializers or any(i.name == out.name for i in self._inputs):
                        problems.append(f"value {out.name!r} is produced by {node!r} and is also "
                                        "a graph input or initializer")
            for slot, v in enumerate(node._inputs):
                if v is None:
                    continue
                if (node._uid, slot) not in v._uses:
                    problems.append(f"{node!r}: input {slot} {v.name!r} is missing from the "
                                    "value's use list; set inputs with Graph methods")
                if self.value(v.name) is not v:
                    problems.append(f"{node!r}: input {slot} {v.name!r} is not defined in this "
                                    "scope (no producer, graph input or initializer)")
                prod = v.producer
                if prod is not None and prod.graph is self and not self._nx.has_edge(prod._uid, node._uid, key=slot):
                    problems.append(f"{node!r}: input {slot} {v.name!r} has no edge from its "
                                    f"producer {prod!r}")
                if prod is None and v.const is None and not v.is_graph_input and v.graph is not None:
                    problems.append(f"{node!r}: input {slot} {v.name!r} has no producer and is "
                                    "neither a graph input nor an initializer")
            for sg in node.subgraphs():
                if sg.parent is not self:
                    problems.append(f"{node!r}: subgraph {sg.name!r} does not point to its parent")
                sg._verify_into(problems)
        for v in self._values.values():
            for (uid, slot), (user, uslot) in v._uses.items():
                if user.graph is None or slot >= len(user._inputs) or user._inputs[slot] is not v:
                    problems.append(f"value {v.name!r}: stale use by {user!r} slot {slot}")
        for out in self._outputs:
            if self.value(out.name) is not out:
                problems.append(f"{where}: output {out.name!r} is not produced by any node, "
                                "input or initializer in scope")

    # -- conversion -----------------------------------------------------------------------
    def to_onnx(self):  # -> onnx.ModelProto
        from homec.onnx_io import graph_to_model

        return graph_to_model(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self._nodes)} nodes)"


def _graph_inside(g: Graph, doomed_ids: set[int]) -> bool:
    """True if graph `g` is the body of one of the doomed nodes (or nested in one)."""
    while g.parent is not None:
        owner = g._owner_node()
        if owner is not None and owner._uid in doomed_ids:
            return True
        g = g.parent
    return False


def _inside(node: Node, doomed_ids: set[int]) -> bool:
    """True if `node` sits in a subgraph of one of the doomed nodes."""
    g = node.graph
    while g is not None and g.parent is not None:
        owner = g._owner_node()
        if owner is not None and owner._uid in doomed_ids:
            return True
        g = g.parent
    return False
