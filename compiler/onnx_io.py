"""The only protobuf code in homec: safe loading of ONNX files into the IR, lossless emitting.

Loading treats a model file as untrusted input: size limits are checked before reading,
external data is read only from regular files inside the model's folder (no absolute paths,
no `..`, no symlinks, offsets and lengths checked against the file and the tensor), and the
graph is checked for cycles, double definitions, undefined inputs and missing opset imports.
Every rejection is an `InvalidModelError` with a one-line message naming the file.

Emitting reproduces everything the IR keeps: with no edits, `load(m).to_onnx() == m` for a
model that stores its weights inline. Tensors that were never replaced are re-emitted from
their original encoding; fields the IR does not model (training_info, configuration,
quantization annotations, node device configurations) travel as opaque bytes.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from homec.dtypes import STRING, itemsize_bits
from homec.errors import InvalidModelError, IRError, OutputError
from homec.files import staging_dir
from homec.ir import (
    Attr,
    AttrType,
    Dim,
    EmptyType,
    Function,
    Graph,
    MapType,
    ModelInfo,
    Node,
    OpaqueType,
    OptionalType,
    SequenceType,
    SparseTensor,
    Tensor,
    TensorType,
    Type,
    Value,
    gc_paused,
    normalize_domain,
)

PROTOBUF_LIMIT = 2**31 - 1  # protobuf cannot parse or serialize a message of 2 GiB or more
# Emit with external data when the weights alone come close to the protobuf limit.
AUTO_EXTERNAL_THRESHOLD = 2**31 - 2**27
EXTERNAL_SIZE_THRESHOLD = 1024  # tensors smaller than this stay inline


# =======================================================================================
# Loading
# =======================================================================================


def load(src: str | os.PathLike | onnx.ModelProto | bytes) -> Graph:
    """Load an ONNX model (a path, serialized bytes or a ModelProto) into the IR, safely."""
    # Building many small objects triggers repeated full garbage collections that make
    # loading super-linear in the node count; the IR has no reference cycles to collect.
    with gc_paused():
        return _load(src)


def _load(src: str | os.PathLike | onnx.ModelProto | bytes) -> Graph:
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
        label = "<ModelProto>"
        base_dir = None
    elif isinstance(src, (bytes, bytearray)):
        model = _parse(bytes(src), "<bytes>")
        label = "<bytes>"
        base_dir = None
    else:
        label = os.fspath(src)
        model = _parse(_read_model_file(label), label)
        base_dir = os.path.dirname(os.path.abspath(label))
    if not model.HasField("graph"):
        raise InvalidModelError("not an ONNX model (no graph in the protobuf)", path=label)
    if model.ir_version <= 0:
        raise InvalidModelError("not an ONNX model (ir_version is missing)", path=label)
    _load_external_data(model, base_dir, label)
    _check_opset_imports(model, label)
    try:
        graph = _ModelReader(model, label).read()
        for _ in graph.all_nodes():  # sorts every (sub)graph, which detects cycles
            pass
    except IRError as e:
        raise InvalidModelError(e.message, path=label) from None
    if base_dir is not None and graph.model is not None:
        graph.model.source_path = os.path.abspath(label)
    return graph


def _read_model_file(path: str) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidModelError("no such file", path=path) from None
    except OSError as e:
        raise InvalidModelError(f"cannot access the file ({e.strerror})", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidModelError("is a directory, not a model file", path=path)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError("is not a regular file", path=path)
    if st.st_size == 0:
        raise InvalidModelError("empty file, not an ONNX model", path=path)
    if st.st_size > PROTOBUF_LIMIT:
        raise InvalidModelError(
            f"file is {st.st_size / 2**30:.1f} GiB; an ONNX protobuf cannot exceed 2 GiB, so "
            "models this large must keep their weights in external data", path=path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InvalidModelError(f"cannot read the file ({e.strerror})", path=path) from None


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise InvalidModelError("empty file, not an ONNX model", path=label)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else "malformed protobuf"
        raise InvalidModelError(f"not an ONNX model or truncated ({reason})", path=label) from None
    return model


# -- external data ---------------------------------------------------------------------


def external_data_files(model_path: str) -> list[str]:
    """The external data files a model file refers to (every tensor, functions and subgraphs
    included), joined to the model's folder, sorted; for build tools' dependency lists. A
    compile has already checked that each is a safe file inside that folder."""
    model = _parse(_read_model_file(model_path), model_path)
    folder = os.path.dirname(model_path)
    files = set()
    for t in _all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        parts = [p for p in location.replace("\\", "/").split("/") if p not in ("", ".")]
        if parts:
            files.add(os.path.join(folder, *parts))
    return sorted(files)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    def in_graph(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        yield from in_nodes(g.node)

    def in_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for n in nodes:
            for a in n.attribute:
                yield from in_attr(a)

    def in_attr(a: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sp in a.sparse_tensors:
            yield sp.values
            yield sp.indices
        if a.HasField("g"):
            yield from in_graph(a.g)
        for g in a.graphs:
            yield from in_graph(g)

    yield from in_graph(model.graph)
    for f in model.functions:
        yield from in_nodes(f.node)
        for a in f.attribute_proto:
            yield from in_attr(a)
    for ti in model.training_info:
        yield from in_graph(ti.initialization)
        yield from in_graph(ti.algorithm)


def _expected_bytes(t: onnx.TensorProto, label: str) -> int:
    if any(d < 0 for d in t.dims):
        raise InvalidModelError(f"tensor {t.name!r} has negative dims {list(t.dims)}", path=label)
    return (math.prod(t.dims) * itemsize_bits(t.data_type) + 7) // 8


# Elements per entry of each typed field, by data type (packed sub-byte types share an int32).
_TYPED_FIELDS = {
    "float_data": {1: 1, 14: 0.5},
    "double_data": {11: 1, 15: 0.5},
    "int64_data": {7: 1},
    "uint64_data": {12: 1, 13: 1},
    "int32_data": {2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 9: 1, 10: 1, 16: 1, 17: 1, 18: 1, 19: 1, 20: 1,
                   24: 1, 27: 1, 28: 1, 21: 2, 22: 2, 23: 2, 25: 4, 26: 4},
}


def _check_inline_tensor(t: onnx.TensorProto, label: str) -> None:
    """The payload must hold exactly dims' worth of elements (else decoding crashes later)."""
    expected = _expected_bytes(t, label)
    count = math.prod(t.dims)
    if t.HasField("raw_data"):
        if t.data_type != STRING and len(t.raw_data) != expected:
            raise InvalidModelError(f"tensor {t.name!r} holds {len(t.raw_data)} bytes of data but "
                                    f"its dims {list(t.dims)} need {expected}", path=label)
        return
    if t.data_type == STRING:
        n = len(t.string_data)
        if n != count:
            raise InvalidModelError(f"tensor {t.name!r} holds {n} strings but its dims "
                                    f"{list(t.dims)} need {count}", path=label)
        return
    for field, per_type in _TYPED_FIELDS.items():
        n = len(getattr(t, field))
        if n and t.data_type in per_type:
            need = math.ceil(count / per_type[t.data_type]) if per_type[t.data_type] >= 1 \
                else count * int(1 / per_type[t.data_type])
            if n != need:
                raise InvalidModelError(f"tensor {t.name!r} holds {n} values but its dims "
                                        f"{list(t.dims)} need {need}", path=label)
            return
    if count and t.data_type not in (0,) and len(t.segment.ListFields()) == 0:
        raise InvalidModelError(f"tensor {t.name!r} has dims {list(t.dims)} but no data",
                                path=label)


def _load_external_data(model: onnx.ModelProto, base_dir: str | None, label: str) -> None:
    for t in _all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            _check_inline_tensor(t, label)
            continue
        if base_dir is None:
            raise InvalidModelError(
                f"tensor {t.name!r} has external data, which needs the model's file path "
                "(load the model from a path, not from bytes)", path=label)
        t.raw_data = _read_external(t, base_dir, label)
        del t.external_data[:]
        t.ClearField("data_location")


def _read_external(t: onnx.TensorProto, base_dir: str, label: str) -> bytes:
    info = {e.key: e.value for e in t.external_data}
    where = f"tensor {t.name!r}: external data"
    location = info.get("location", "")
    if not location:
        raise InvalidModelError(f"{where} has no location", path=label)
    if t.data_type == STRING:
        raise InvalidModelError(f"{where}: string tensors cannot use external data", path=label)
    if "\0" in location:
        raise InvalidModelError(f"{where} location contains a NUL byte", path=label)
    if (os.path.isabs(location) or location.startswith(("/", "\\"))
            or (len(location) > 1 and location[1] == ":")):
        raise InvalidModelError(f"{where} location {location!r} is absolute; it must be "
                                "relative to the model's folder", path=label)
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise InvalidModelError(f"{where} location {location!r} contains '..'", path=label)
    base_real = os.path.realpath(base_dir)
    # Walk component by component so no symlink anywhere on the way is followed.
    current = base_dir
    for part in parts:
        if part in ("", "."):
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise InvalidModelError(f"{where} location {location!r} goes through a symlink",
                                    path=label)
    full = os.path.join(base_dir, *[p for p in parts if p not in ("", ".")])
    real = os.path.realpath(full)
    if os.path.commonpath([real, base_real]) != base_real:
        raise InvalidModelError(f"{where} location {location!r} resolves outside the model's "
                                "folder", path=label)
    try:
        st = os.stat(full)
    except OSError:
        raise InvalidModelError(f"{where} file {location!r} does not exist", path=label) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError(f"{where} file {location!r} is not a regular file", path=label)
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise InvalidModelError(f"{where} has a non-numeric offset or length", path=label) from None
    if offset < 0 or length < 0:
        raise InvalidModelError(f"{where} has a negative offset or length", path=label)
    if offset + length > st.st_size:
        raise InvalidModelError(
            f"{where} range [{offset}, {offset + length}) exceeds the {st.st_size}-byte file "
            f"{location!r}", path=label)
    expected = _expected_bytes(t, label)
    if length != expected:
        raise InvalidModelError(f"{where} length {length} does not match the tensor's size of "
                                f"{expected} bytes", path=label)
    try:  # O_NOFOLLOW: the file cannot be swapped for a symlink between the checks and here
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise InvalidModelError(f"{where} file {location!r} cannot be opened ({e.strerror})",
                                path=label) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidModelError(f"{where} file {location!r} is not a regular file", path=label)
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise InvalidModelError(f"{where} file {location!r} is shorter than declared", path=label)
    return data


# -- structural checks -------------------------------------------------------------------


def _check_opset_imports(model: onnx.ModelProto, label: str) -> None:
    imported = {normalize_domain(o.domain) for o in model.opset_import}
    function_domains = {normalize_domain(f.domain) for f in model.functions}

    def check_nodes(nodes: Iterable[onnx.NodeProto], scope: set[str], where: str) -> None:
        for n in nodes:
            d = normalize_domain(n.domain)
            if d not in scope and d not in function_domains:
                what = f"domain {d!r}" if d else "the default ONNX domain"
                raise InvalidModelError(
                    f"node {n.name or n.op_type!r} ({n.op_type}) in {where} uses {what} but the "
                    "model has no opset import for it", path=label)
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    check_nodes(g.node, scope, where)

    check_nodes(model.graph.node, imported, "the main graph")
    for f in model.functions:
        scope = {normalize_domain(o.domain) for o in f.opset_import} | imported
        check_nodes(f.node, scope, f"function {f.name!r}")


# -- proto -> IR ---------------------------------------------------------------------------


def type_from_proto(tp: onnx.TypeProto) -> Type:
    which = tp.WhichOneof("value")
    den = tp.denotation
    if which == "tensor_type" or which == "sparse_tensor_type":
        tt = tp.tensor_type if which == "tensor_type" else tp.sparse_tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                Dim(value=d.dim_value if d.HasField("dim_value") else None,
                    param=d.dim_param if d.HasField("dim_param") else None,
                    denotation=d.denotation)
                for d in tt.shape.dim)
        return TensorType(tt.elem_type, shape, den, sparse=which == "sparse_tensor_type")
    if which == "sequence_type":
        st = tp.sequence_type
        return SequenceType(type_from_proto(st.elem_type) if st.HasField("elem_type") else None, den)
    if which == "optional_type":
        ot = tp.optional_type
        return OptionalType(type_from_proto(ot.elem_type) if ot.HasField("elem_type") else None, den)
    if which == "map_type":
        mt = tp.map_type
        return MapType(mt.key_type, type_from_proto(mt.value_type) if mt.HasField("value_type") else None, den)
    if which == "opaque_type":
        return OpaqueType(tp.opaque_type.domain, tp.opaque_type.name, den)
    return EmptyType(den)


def _decode_tensor(encoded: bytes) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString(encoded)
    if t.data_type == STRING:  # ONNX strings are bytes and need not be UTF-8
        return np.array(list(t.string_data), dtype=object).reshape(tuple(t.dims))
    return numpy_helper.to_array(t)


def tensor_from_proto(t: onnx.TensorProto) -> Tensor:
    return Tensor(t.name, t.data_type, t.dims, encoded=t.SerializeToString(deterministic=True),
                  decode=_decode_tensor, doc_string=t.doc_string,
                  metadata=[(p.key, p.value) for p in t.metadata_props])


def sparse_from_proto(sp: onnx.SparseTensorProto) -> SparseTensor:
    return SparseTensor(tensor_from_proto(sp.values), tensor_from_proto(sp.indices), sp.dims)


def _props(ps) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in ps]


def _empty_present(msg) -> tuple[str, ...]:
    """Scalar fields explicitly set to their default value (proto2 keeps that distinction,
    and an untouched model must come back equal)."""
    return tuple(fd.name for fd, val in msg.ListFields()
                 if not _is_repeated(fd) and fd.type != fd.TYPE_MESSAGE
                 and val == fd.default_value)


def _is_repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)  # protobuf >= 6; older ones only have `label`
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


def _restore_empty(msg, names) -> None:
    for name in names:
        if not msg.HasField(name):
            setattr(msg, name, msg.DESCRIPTOR.fields_by_name[name].default_value)


def _declared_info(vi: onnx.ValueInfoProto) -> tuple:
    return (type_from_proto(vi.type) if vi.HasField("type") else None, vi.doc_string,
            _props(vi.metadata_props), _empty_present(vi))


class _ModelReader:
    def __init__(self, model: onnx.ModelProto, label: str):
        self.model = model
        self.label = label

    def read(self) -> Graph:
        m = self.model
        info = ModelInfo(
            ir_version=m.ir_version,
            opset_imports=[(o.domain, o.version) for o in m.opset_import],
            producer_name=m.producer_name,
            producer_version=m.producer_version,
            domain=m.domain,
            model_version=m.model_version,
            doc_string=m.doc_string,
            metadata=_props(m.metadata_props),
        )
        info.opaque["empty"] = _empty_present(m)
        info.opaque["opset_empty"] = [_empty_present(o) for o in m.opset_import]
        if len(m.training_info):
            info.opaque["training_info"] = [t.SerializeToString(deterministic=True) for t in m.training_info]
        if len(m.configuration):
            info.opaque["configuration"] = [c.SerializeToString(deterministic=True) for c in m.configuration]
        info.functions = [self.read_function(f) for f in m.functions]
        graph = self.read_graph(m.graph, parent=None)
        graph.model = info
        return graph

    def read_function(self, f: onnx.FunctionProto) -> Function:
        body = Graph(f.name)
        for name in f.input:
            body.add_input(name)
        self._read_nodes(body, f.node)
        self._read_value_info(body, f.value_info)
        body.set_outputs([self._resolve_output(body, name, None) for name in f.output])
        body._opaque["opset_empty"] = [_empty_present(o) for o in f.opset_import]
        body._opaque["empty"] = _empty_present(f)
        return Function(
            name=f.name, domain=f.domain, body=body,
            attribute_names=list(f.attribute),
            attribute_defaults=[self.read_attr(a, body) for a in f.attribute_proto],
            opset_imports=[(o.domain, o.version) for o in f.opset_import],
            overload=f.overload, doc_string=f.doc_string, metadata=_props(f.metadata_props))

    def read_graph(self, gp: onnx.GraphProto, parent: Graph | None) -> Graph:
        g = Graph(gp.name, parent=parent)
        g.doc_string = gp.doc_string
        g.metadata = _props(gp.metadata_props)
        g._opaque["empty"] = _empty_present(gp)
        if len(gp.quantization_annotation):
            g._opaque["quantization_annotation"] = [
                q.SerializeToString(deterministic=True) for q in gp.quantization_annotation]
        for vi in gp.input:
            v = g.add_input(vi.name, type_from_proto(vi.type) if vi.HasField("type") else None)
            v.doc_string = vi.doc_string
            v.metadata = _props(vi.metadata_props)
            v._opaque["empty"] = _empty_present(vi)
        for t in gp.initializer:
            if t.name in g._initializers:
                raise IRError(f"initializer {t.name!r} is defined twice")
            g.add_initializer(t.name, tensor_from_proto(t))
        for sp in gp.sparse_initializer:
            name = sp.values.name
            if name in g._initializers:
                raise IRError(f"sparse initializer {name!r} is defined twice")
            g.add_initializer(name, sparse_from_proto(sp))
        self._read_nodes(g, gp.node)
        self._read_value_info(g, gp.value_info)
        outs = []
        for vi in gp.output:
            outs.append(self._resolve_output(g, vi.name, vi))
        g.set_outputs(outs)
        return g

    def _resolve_output(self, g: Graph, name: str, vi: onnx.ValueInfoProto | None) -> Value:
        v = g.value(name)
        if v is None:
            raise IRError(f"graph {g.name!r}: output {name!r} is not produced by any node, "
                          "input or initializer")
        if vi is not None:
            declared = _declared_info(vi)
            if v.type is None and not v.doc_string and not v.metadata and v.graph is g \
                    and not v.is_graph_input and not v._opaque.get("described"):
                v.type, v.doc_string, v.metadata, v._opaque["empty"] = declared
                v._opaque["described"] = True
            elif (v.type, v.doc_string, v.metadata, v._opaque.get("empty", ())) != declared:
                g._declared[("output", name)] = (v.type, declared)
        return v

    def _read_value_info(self, g: Graph, vis: Iterable[onnx.ValueInfoProto]) -> None:
        for vi in vis:
            g._value_info_names.append(vi.name)
            declared = _declared_info(vi)
            v = g._values.get(vi.name)
            if v is not None and v.type is None and not v.doc_string and not v.metadata \
                    and not v.is_graph_input and not v._opaque.get("described"):
                v.type, v.doc_string, v.metadata, v._opaque["empty"] = declared
                v._opaque["described"] = True
            else:
                # value_info for an input, a twice-described value or a name that does not
                # exist here: keep it verbatim.
                g._declared[("vi", vi.name, len(g._value_info_names) - 1)] = (
                    v.type if v is not None else None, declared)

    def _read_nodes(self, g: Graph, nodes: Iterable[onnx.NodeProto]) -> None:
        protos = list(nodes)
        built: list[Node] = []
        # Phase 1: every node and its outputs, so inputs can refer to later nodes (files
        # that are not topologically sorted load; real cycles are reported by the sort).
        for np_ in protos:
            outs: list[Value | None] = [Value(o) if o else None for o in np_.output]
            node = Node(np_.op_type, [], outs, domain=np_.domain, name=np_.name,
                        overload=np_.overload, doc_string=np_.doc_string)
            node.metadata = _props(np_.metadata_props)
            node._opaque["empty"] = _empty_present(np_)
            if len(np_.device_configurations):
                node._opaque["device_configurations"] = [
                    d.SerializeToString(deterministic=True) for d in np_.device_configurations]
            if np_.domain == "ai.onnx":
                node._opaque["domain_spelling"] = [b"ai.onnx"]
            for o in outs:
                if o is None:
                    continue
                existing = g.value(o.name)  # SSA across scopes: no shadowing of outer names
                if existing is not None:
                    what = (f"node {existing.producer!r}" if existing.producer is not None
                            else "a graph input or initializer")
                    raise IRError(f"value {o.name!r} has two producers: {what} and "
                                  f"node {np_.name or np_.op_type!r}")
            g.append(node)
            built.append(node)
        # Phase 2: attributes (subgraphs see every outer value) and inputs.
        for np_, node in zip(protos, built):
            node.attrs = {a.name: self.read_attr(a, g) for a in np_.attribute}
            g._owners_cache = None
            for sg in node.subgraphs():
                g._link_captures(node, sg)
            inputs: list[Value | None] = []
            for i, name in enumerate(np_.input):
                if not name:
                    inputs.append(None)
                    continue
                v = g.value(name)
                if v is None:
                    raise IRError(f"node {np_.name or np_.op_type!r} ({np_.op_type}) input {i} "
                                  f"{name!r} is not defined by any node, graph input or "
                                  "initializer")
                inputs.append(v)
            g.set_inputs_of(node, inputs)

    def read_attr(self, a: onnx.AttributeProto, scope: Graph) -> Attr:
        t = AttrType(a.type) if a.type in AttrType._value2member_map_ else AttrType.UNDEFINED
        if t == AttrType.UNDEFINED:
            t = _infer_attr_type(a)
        value: object
        if t == AttrType.FLOAT:
            value = a.f
        elif t == AttrType.INT:
            value = a.i
        elif t == AttrType.STRING:
            value = a.s
        elif t == AttrType.TENSOR:
            value = tensor_from_proto(a.t)
        elif t == AttrType.GRAPH:
            value = self.read_graph(a.g, parent=scope)
        elif t == AttrType.SPARSE_TENSOR:
            value = sparse_from_proto(a.sparse_tensor)
        elif t == AttrType.TYPE_PROTO:
            value = type_from_proto(a.tp)
        elif t == AttrType.FLOATS:
            value = list(a.floats)
        elif t == AttrType.INTS:
            value = list(a.ints)
        elif t == AttrType.STRINGS:
            value = list(a.strings)
        elif t == AttrType.TENSORS:
            value = [tensor_from_proto(x) for x in a.tensors]
        elif t == AttrType.GRAPHS:
            value = [self.read_graph(x, parent=scope) for x in a.graphs]
        elif t == AttrType.SPARSE_TENSORS:
            value = [sparse_from_proto(x) for x in a.sparse_tensors]
        elif t == AttrType.TYPE_PROTOS:
            value = [type_from_proto(x) for x in a.type_protos]
        else:
            value = None
        if a.ref_attr_name and t in _SCALAR_FIELD and not a.HasField(_SCALAR_FIELD[t]):
            value = None  # a reference to the calling node's attribute, with no own value
        attr = Attr(a.name, t, value, ref_attr_name=a.ref_attr_name, doc_string=a.doc_string)
        attr.opaque["empty"] = _empty_present(a)
        if not a.HasField("type"):
            attr.opaque["untyped"] = True  # very old producers omit it
        return attr


_SCALAR_FIELD = {AttrType.FLOAT: "f", AttrType.INT: "i", AttrType.STRING: "s",
                 AttrType.TENSOR: "t", AttrType.GRAPH: "g", AttrType.SPARSE_TENSOR: "sparse_tensor",
                 AttrType.TYPE_PROTO: "tp"}


def _infer_attr_type(a: onnx.AttributeProto) -> AttrType:
    for field, t in (("f", AttrType.FLOAT), ("i", AttrType.INT), ("s", AttrType.STRING),
                     ("t", AttrType.TENSOR), ("g", AttrType.GRAPH),
                     ("sparse_tensor", AttrType.SPARSE_TENSOR), ("tp", AttrType.TYPE_PROTO)):
        if a.HasField(field):
            return t
    for field, t in (("floats", AttrType.FLOATS), ("ints", AttrType.INTS),
                     ("strings", AttrType.STRINGS), ("tensors", AttrType.TENSORS),
                     ("graphs", AttrType.GRAPHS), ("sparse_tensors", AttrType.SPARSE_TENSORS),
                     ("type_protos", AttrType.TYPE_PROTOS)):
        if len(getattr(a, field)):
            return t
    return AttrType.UNDEFINED


# =======================================================================================
# Emitting
# =======================================================================================


def type_to_proto(t: Type, out: onnx.TypeProto) -> None:
    if t.denotation:
        out.denotation = t.denotation
    if isinstance(t, TensorType):
        tt = out.sparse_tensor_type if t.sparse else out.tensor_type
        tt.elem_type = t.elem_type
        if t.shape is not None:
            tt.shape.SetInParent()
            for d in t.shape:
                dp = tt.shape.dim.add()
                if d.value is not None:
                    dp.dim_value = d.value
                elif d.param is not None:
                    dp.dim_param = d.param
                if d.denotation:
                    dp.denotation = d.denotation
    elif isinstance(t, SequenceType):
        out.sequence_type.SetInParent()
        if t.elem is not None:
            type_to_proto(t.elem, out.sequence_type.elem_type)
    elif isinstance(t, OptionalType):
        out.optional_type.SetInParent()
        if t.elem is not None:
            type_to_proto(t.elem, out.optional_type.elem_type)
    elif isinstance(t, MapType):
        out.map_type.key_type = t.key_type
        if t.value is not None:
            type_to_proto(t.value, out.map_type.value_type)
        else:
            out.map_type.SetInParent()
    elif isinstance(t, OpaqueType):
        out.opaque_type.SetInParent()
        if t.domain:
            out.opaque_type.domain = t.domain
        if t.name:
            out.opaque_type.name = t.name


def tensor_to_proto(t: Tensor, out: onnx.TensorProto) -> None:
    if t.encoded is not None:
        out.ParseFromString(t.encoded)
        if out.name != t.name:
            out.name = t.name
        return
    arr = t.numpy()
    proto = numpy_helper.from_array(arr, t.name)
    out.CopyFrom(proto)
    if t.doc_string:
        out.doc_string = t.doc_string
    for k, v in t.metadata:
        p = out.metadata_props.add()
        p.key, p.value = k, v


def _sparse_to_proto(sp: SparseTensor, out: onnx.SparseTensorProto) -> None:
    tensor_to_proto(sp.values, out.values)
    tensor_to_proto(sp.indices, out.indices)
    out.dims.extend(sp.dims)


def _set_props(field, props: list[tuple[str, str]]) -> None:
    for k, v in props:
        p = field.add()
        p.key, p.value = k, v


def _value_info(name: str, type: Type | None, doc: str, meta: list[tuple[str, str]],
                out: onnx.ValueInfoProto, empty: tuple[str, ...] = ()) -> None:
    out.name = name
    if type is not None:
        type_to_proto(type, out.type)
    if doc:
        out.doc_string = doc
    _set_props(out.metadata_props, meta)
    _restore_empty(out, empty)


class _Emitter:
    def __init__(self, weights_as_inputs_over: int | None = None):
        self.weights_as_inputs_over = weights_as_inputs_over

    def _as_input(self, g: Graph, v: Value) -> bool:
        """For analysis-only emission: large float weights become typed graph inputs, so
        shape inference need not serialize (or read) their data."""
        limit = self.weights_as_inputs_over
        return (limit is not None and g.parent is None and isinstance(v.const, Tensor)
                and v.const.dtype not in (6, 7) and v.const.nbytes > limit)

    def graph(self, g: Graph, out: onnx.GraphProto) -> None:
        declared = g._declared
        for n in g.nodes:
            self.node(n, out.node.add())
        if g.name:
            out.name = g.name
        elided = []
        for v in g._initializers.values():
            if isinstance(v.const, Tensor):
                if self._as_input(g, v):
                    elided.append(v)
                    continue
                tensor_to_proto(v.const, out.initializer.add())
                if out.initializer[-1].name != v.name:
                    out.initializer[-1].name = v.name
        for v in g._initializers.values():
            if isinstance(v.const, SparseTensor):
                _sparse_to_proto(v.const, out.sparse_initializer.add())
        if g.doc_string:
            out.doc_string = g.doc_string
        for v in g._inputs:
            _value_info(v.name, v.type, v.doc_string, v.metadata, out.input.add(),
                        v._opaque.get("empty", ()))
        for v in elided:
            if not v.is_graph_input:
                t = v.const
                _value_info(v.name, TensorType(t.dtype, tuple(Dim.of(d) for d in t.dims)),
                            "", [], out.input.add())
        for v in g._outputs:
            d = declared.get(("output", v.name))
            if d is not None and d[0] == v.type:
                _value_info(v.name, *d[1][:3], out.output.add(), d[1][3])
            else:
                _value_info(v.name, v.type, v.doc_string, v.metadata, out.output.add(),
                            v._opaque.get("empty", ()))
        for i, name in enumerate(g._value_info_names):
            d = declared.get(("vi", name, i))
            v = g.value(name)
            if d is not None:
                if v is None and d[0] is not None:
                    continue  # described a value that a pass removed
                _value_info(name, *d[1][:3], out.value_info.add(), d[1][3])
            elif v is not None:
                _value_info(name, v.type, v.doc_string, v.metadata, out.value_info.add(),
                            v._opaque.get("empty", ()))
        for blob in g._opaque.get("quantization_annotation", []):
            out.quantization_annotation.add().ParseFromString(blob)
        _set_props(out.metadata_props, g.metadata)
        _restore_empty(out, g._opaque.get("empty", ()))

    def node(self, n: Node, out: onnx.NodeProto) -> None:
        out.input.extend(v.name if v is not None else "" for v in n.inputs)
        # Trailing omitted inputs were written as "" in the source; keep them.
        out.output.extend(v.name if v is not None else "" for v in n.outputs)
        if n.name:
            out.name = n.name
        out.op_type = n.op_type
        if n._opaque.get("domain_spelling"):
            out.domain = "ai.onnx"
        elif n.domain:
            out.domain = n.domain
        if n.overload:
            out.overload = n.overload
        for a in n.attrs.values():
            self.attr(a, out.attribute.add())
        if n.doc_string:
            out.doc_string = n.doc_string
        _set_props(out.metadata_props, n.metadata)
        for blob in n._opaque.get("device_configurations", []):
            out.device_configurations.add().ParseFromString(blob)
        _restore_empty(out, n._opaque.get("empty", ()))

    def attr(self, a: Attr, out: onnx.AttributeProto) -> None:
        out.name = a.name
        if a.ref_attr_name:
            out.ref_attr_name = a.ref_attr_name
        if a.doc_string:
            out.doc_string = a.doc_string
        if not a.opaque.get("untyped"):
            out.type = int(a.type)
        _restore_empty(out, a.opaque.get("empty", ()))
        t, v = a.type, a.value
        if v is None:
            return
        if t == AttrType.FLOAT:
            out.f = v
        elif t == AttrType.INT:
            out.i = v
        elif t == AttrType.STRING:
            out.s = v if isinstance(v, bytes) else str(v).encode()
        elif t == AttrType.TENSOR:
            tensor_to_proto(v, out.t)
        elif t == AttrType.GRAPH:
            self.graph(v, out.g)
        elif t == AttrType.SPARSE_TENSOR:
            _sparse_to_proto(v, out.sparse_tensor)
        elif t == AttrType.TYPE_PROTO:
            type_to_proto(v, out.tp)
        elif t == AttrType.FLOATS:
            out.floats.extend(v)
        elif t == AttrType.INTS:
            out.ints.extend(v)
        elif t == AttrType.STRINGS:
            out.strings.extend(s if isinstance(s, bytes) else str(s).encode() for s in v)
        elif t == AttrType.TENSORS:
            for x in v:
                tensor_to_proto(x, out.tensors.add())
        elif t == AttrType.GRAPHS:
            for x in v:
                self.graph(x, out.graphs.add())
        elif t == AttrType.SPARSE_TENSORS:
            for x in v:
                _sparse_to_proto(x, out.sparse_tensors.add())
        elif t == AttrType.TYPE_PROTOS:
            for x in v:
                type_to_proto(x, out.type_protos.add())

    def function(self, f: Function, out: onnx.FunctionProto) -> None:
        out.name = f.name
        out.input.extend(v.name for v in f.body.inputs)
        out.output.extend(v.name for v in f.body.outputs)
        out.attribute.extend(f.attribute_names)
        for a in f.attribute_defaults:
            self.attr(a, out.attribute_proto.add())
        for n in f.body.nodes:
            self.node(n, out.node.add())
        if f.doc_string:
            out.doc_string = f.doc_string
        _opsets(out.opset_import, f.opset_imports, f.body._opaque.get("opset_empty"))
        if f.domain:
            out.domain = f.domain
        if f.overload:
            out.overload = f.overload
        declared = f.body._declared
        for i, name in enumerate(f.body._value_info_names):
            d = declared.get(("vi", name, i))
            v = f.body._values.get(name)
            if d is not None:
                t, doc, meta = d[1][:3]
            elif v is not None:
                t, doc, meta = v.type, v.doc_string, v.metadata
            else:
                continue
            _value_info(name, t, doc, meta, out.value_info.add())
        _set_props(out.metadata_props, f.metadata)
        _restore_empty(out, f.body._opaque.get("empty", ()))


def graph_to_model(graph: Graph, *, weights_as_inputs_over: int | None = None) -> onnx.ModelProto:
    """Emit a top-level IR graph as a ModelProto (weights inline).

    `weights_as_inputs_over=N` is for analyses (shape inference): float initializers over N
    bytes are emitted as typed graph inputs without their data.
    """
    if graph.parent is not None:
        raise IRError("to_onnx() is for top-level graphs; this is a subgraph")
    info = graph.model or ModelInfo()
    m = onnx.ModelProto()
    m.ir_version = info.ir_version
    _opsets(m.opset_import, info.opset_imports, info.opaque.get("opset_empty"))
    if info.producer_name:
        m.producer_name = info.producer_name
    if info.producer_version:
        m.producer_version = info.producer_version
    if info.domain:
        m.domain = info.domain
    if info.model_version:
        m.model_version = info.model_version
    if info.doc_string:
        m.doc_string = info.doc_string
    em = _Emitter(weights_as_inputs_over)
    em.graph(graph, m.graph)
    _set_props(m.metadata_props, info.metadata)
    for blob in info.opaque.get("training_info", []):
        m.training_info.add().ParseFromString(blob)
    for f in info.functions:
        em.function(f, m.functions.add())
    for blob in info.opaque.get("configuration", []):
        m.configuration.add().ParseFromString(blob)
    _restore_empty(m, info.opaque.get("empty", ()))
    return m


def export_with_outputs(graph: Graph, names: Iterable[str], *, float_type: int = 1) -> bytes:
    """The model serialized with `names` (values of the top-level graph) added as outputs.

    For analyses that read intermediate tensors with onnxruntime (calibration, per-layer
    error): onnxruntime returns only graph outputs. Each added output is declared as a tensor
    of `float_type` with unknown shape unless the value's own type is known.
    """
    m = graph_to_model(graph)
    present = {o.name for o in m.graph.output}
    for name in names:
        if name in present:
            continue
        present.add(name)
        v = graph.value(name)
        out = m.graph.output.add()
        out.name = name
        t = v.type if v is not None else None
        if t is not None:
            type_to_proto(t, out.type)
        else:
            out.type.tensor_type.elem_type = float_type
    return m.SerializeToString()


def convert_opset(graph: Graph, version: int) -> None:
    """Convert a top-level graph to default-domain opset `version` with onnx's version
    converter, in place (the Graph object is kept; its contents are replaced).

    Raises UnsupportedError when the converter cannot convert some operator.
    """
    from onnx import version_converter

    from homec.errors import UnsupportedError

    model = graph_to_model(graph)
    try:
        converted = version_converter.convert_version(model, int(version))
    except Exception as e:  # the converter raises RuntimeError/ValueError/its own types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedError(f"cannot convert the model to opset {version}: {first}") from None
    source = graph.model.source_path if graph.model is not None else None
    new = _load(converted)
    if new.model is not None:
        new.model.source_path = source
    graph.adopt(new)


def _opsets(field, imports: list[tuple[str, int]], empties: list | None) -> None:
    for i, (d, v) in enumerate(imports):
        o = field.add()
        if d:
            o.domain = d
        if v:
            o.version = v
        if empties is not None and i < len(empties) and len(empties) == len(imports):
            _restore_empty(o, empties[i])
        elif not d:
            o.domain = ""  # the common spelling: domain written out even when empty


# -- saving ------------------------------------------------------------------------------


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data)
               + 4 * len(t.int32_data) + 8 * len(t.double_data) for t in _all_tensors(model))


def save(model: Graph | onnx.ModelProto, path: str | os.PathLike, *,
         external_data: bool | None = None) -> None:
    """Write `model` to `path` atomically (a temporary file renamed into place).

    external_data: True writes tensors of 1 KiB or more to `<file name>.data` beside the
    model; None does so only when the model would exceed the 2 GiB protobuf limit.
    Output is deterministic: the same model gives the same bytes.
    """
    proto = model.to_onnx() if isinstance(model, Graph) else model
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"output folder {directory!r} does not exist", path=path)
    if external_data is None:
        external_data = _weight_bytes(proto) > AUTO_EXTERNAL_THRESHOLD
    for p in (path, path + ".data") if external_data else (path,):
        if os.path.isdir(p):
            raise OutputError(f"{p!r} is a directory", path=path)
    try:
        with staging_dir(directory, "model") as tmp_dir:
            if external_data:
                data_name = os.path.basename(path) + ".data"
                m = onnx.ModelProto()
                m.CopyFrom(proto)
                _write_external(m, tmp_dir, data_name)
                tmp_model = os.path.join(tmp_dir, os.path.basename(path))
                with open(tmp_model, "wb") as f:
                    f.write(m.SerializeToString(deterministic=True))
                final_data = os.path.join(directory, data_name)
                backup = None
                if os.path.exists(final_data):  # keep the old weights until the model is in place
                    backup = os.path.join(tmp_dir, data_name + ".old")
                    os.replace(final_data, backup)
                try:
                    os.replace(os.path.join(tmp_dir, data_name), final_data)
                    os.replace(tmp_model, path)
                except OSError:
                    if backup is not None:
                        os.replace(backup, final_data)
                    elif os.path.exists(final_data):
                        os.unlink(final_data)
                    raise
            else:
                tmp_model = os.path.join(tmp_dir, os.path.basename(path))
                data = proto.SerializeToString(deterministic=True)
                if len(data) > PROTOBUF_LIMIT:
                    raise OutputError("the model exceeds 2 GiB; save it with external data", path=path)
                with open(tmp_model, "wb") as f:
                    f.write(data)
                os.replace(tmp_model, path)
    except OSError as e:
        raise OutputError(f"cannot write the model ({e.strerror or e})", path=path) from None
    except ValueError as e:  # protobuf refuses messages over 2 GiB
        raise OutputError(f"cannot serialize the model ({e})", path=path) from None


def _write_external(model: onnx.ModelProto, folder: str, data_name: str) -> None:
    """Move tensors of EXTERNAL_SIZE_THRESHOLD bytes or more to one data file, in model order,
    each at a 64-byte-aligned offset (deterministic: same model, same file)."""
    with open(os.path.join(folder, data_name), "wb") as f:
        offset = 0
        for t in _all_tensors(model):
            if t.data_type == STRING or t.data_location == onnx.TensorProto.EXTERNAL:
                continue
            if not t.HasField("raw_data"):
                if _tensor_payload_size(t) < EXTERNAL_SIZE_THRESHOLD:
                    continue
                arr = numpy_helper.to_array(t)
                fresh = numpy_helper.from_array(arr, t.name)
                raw = fresh.raw_data
            else:
                raw = t.raw_data
            if len(raw) < EXTERNAL_SIZE_THRESHOLD:
                continue
            pad = (-offset) % 64
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(fld)
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(raw)


def _tensor_payload_size(t: onnx.TensorProto) -> int:
    count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    return (count * itemsize_bits(t.data_type) + 7) // 8
