"""Conformance of the loader/emitter on real ONNX content.

a) every node test case shipped with onnx (onnx.backend.test.case.node.collect_testcases);
b) the onnx "light" zoo models and the PP-OCRv4 models shipped with rapidocr_onnxruntime;
c) hand-built models exercising every corner of the format.

For each model, `homec.load(m).to_onnx()` must (i) equal the original proto (lossless),
(ii) pass onnx.checker (full_check) whenever the original does, and (iii) give outputs
identical to the original's under onnxruntime whenever onnxruntime can run the original.

The node cases are checked in a few looping tests (not 1884 pytest items); each collects
every failure and prints the counts: run `pytest -m slow -s tests/real` to see them.
"""

from __future__ import annotations

import collections
import glob
import math
import os
import re
import time
import warnings
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import homec

pytestmark = pytest.mark.slow

ort = pytest.importorskip("onnxruntime")
ort.set_default_logger_severity(3)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _short(v, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def proto_diff(a, b, path: str = "model") -> str | None:
    """The first difference between two protos as 'path: what', or None if equal."""
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} vs {type(b).__name__}"
    fa = {f.name: (f, v) for f, v in a.ListFields()}
    fb = {f.name: (f, v) for f, v in b.ListFields()}
    for name in [f.name for f in a.DESCRIPTOR.fields]:
        p = f"{path}.{name}"
        if name in fa and name not in fb:
            return f"{p}: set in the original ({_short(fa[name][1])}), absent after the round trip"
        if name in fb and name not in fa:
            return f"{p}: absent in the original, set after the round trip ({_short(fb[name][1])})"
        if name not in fa:
            continue
        fd, va = fa[name]
        vb = fb[name][1]
        repeated = getattr(fd, "is_repeated", None)
        repeated = repeated if repeated is not None else fd.label == fd.LABEL_REPEATED
        is_msg = fd.type == fd.TYPE_MESSAGE
        if repeated:
            if len(va) != len(vb):
                names = ""
                if is_msg and len(va) and hasattr(va[0], "name"):
                    names = f" (original {[x.name for x in va][:8]} vs {[x.name for x in vb][:8]})"
                return f"{p}: {len(va)} items in the original, {len(vb)} after{names}"
            for i, (x, y) in enumerate(zip(va, vb)):
                if is_msg:
                    d = proto_diff(x, y, f"{p}[{i}]")
                    if d:
                        return d
                elif not _same_scalar(x, y):
                    return f"{p}[{i}]: {_short(x)} != {_short(y)}"
        elif is_msg:
            d = proto_diff(va, vb, p)
            if d:
                return d
        elif not _same_scalar(va, vb):
            return f"{p}: {_short(va)} != {_short(vb)}"
    if a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True):
        return f"{path}: serializations differ (unknown fields?)"
    return None


def _same_scalar(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def assert_lossless(original: onnx.ModelProto, emitted: onnx.ModelProto, what: str) -> None:
    if emitted == original:
        return
    d = proto_diff(original, emitted)
    if d is None:
        return  # equal up to NaN spelling; serializations are identical
    pytest.fail(f"{what}: round trip is not lossless: {d}")


def _session(model: onnx.ModelProto | bytes | str):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _to_feed(x):
    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, np.generic):
        return np.asarray(x)
    if isinstance(x, list):
        return [_to_feed(i) for i in x]
    return x


def identical(a, b) -> bool:
    """Bit-identical outputs (NaNs included), recursing into sequences."""
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
            identical(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict) or isinstance(b, dict):
        return a == b
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return a.tobytes() == b.tobytes()


def _reason(e: BaseException) -> str:
    """A short bucket name for why onnxruntime could not run a model."""
    msg = str(e)
    for pat, label in [
        (r"Could not find an implementation", "no onnxruntime kernel for the op/type"),
        (r"Unable to handle object of type", "input type not feedable from Python"),
        (r"Numpy_type \d+ can't be converted", "input dtype not supported by the Python binding"),
        (r"No corresponding Numpy type for Tensor Type", "output dtype not supported by the Python binding"),
        (r"is not a registered function/op", "op not registered"),
        (r"Failed to find kernel", "no onnxruntime kernel for the op/type"),
        (r"ai\.onnx\.preview", "domain ai.onnx.preview.* not supported"),
        (r"Unsupported model IR version", "IR version not supported"),
        (r"opset .* is under development|Opset \d+ .*not supported|ONNX Runtime only \*guarantees\*",
         "opset not supported"),
        (r"Type Error|type \(.*\) of output arg|Type mismatch", "type error in onnxruntime"),
        (r"ShapeInferenceError|Shape mismatch|shape inference", "onnxruntime shape inference error"),
        (r"Exception during initialization", "kernel initialization failed"),
        (r"Non-zero status code returned while running", "kernel run failed"),
    ]:
        if re.search(pat, msg):
            return label
    return f"{type(e).__name__}: {msg.splitlines()[0][:70] if msg else ''}"


# ---------------------------------------------------------------------------------------
# a) onnx node test cases
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            from onnx.backend.test.case.node import collect_testcases

            cases = collect_testcases(None)
    assert len(cases) > 1000
    assert all(c.model is not None for c in cases)
    return cases


@pytest.fixture(scope="module")
def node_roundtrips(node_cases):
    """name -> (round-tripped ModelProto or None, error text or None)."""
    out: dict[str, tuple[onnx.ModelProto | None, str | None]] = {}
    t0 = time.perf_counter()
    for c in node_cases:
        before = c.model.SerializeToString(deterministic=True)
        try:
            rt = homec.load(c.model).to_onnx()
            err = None
        except Exception as e:  # noqa: BLE001 — recorded as a failure
            rt, err = None, f"{type(e).__name__}: {e}"
        if c.model.SerializeToString(deterministic=True) != before:
            err = (err + "; " if err else "") + "homec.load() modified the ModelProto it was given"
        out[c.name] = (rt, err)
    print(f"\n[conformance] load+emit of {len(node_cases)} node cases: {time.perf_counter() - t0:.1f}s")
    return out


def _report(failures: list[str], header: str) -> None:
    if failures:
        shown = "\n  ".join(failures[:60])
        more = f"\n  ... and {len(failures) - 60} more" if len(failures) > 60 else ""
        pytest.fail(f"{header}: {len(failures)} failures\n  {shown}{more}", pytrace=False)


def test_node_cases_lossless(node_cases, node_roundtrips):
    failures = []
    for c in node_cases:
        rt, err = node_roundtrips[c.name]
        if err:
            failures.append(f"{c.name}: {err}")
        elif rt != c.model:
            d = proto_diff(c.model, rt)
            if d is not None:
                failures.append(f"{c.name}: {d}")
    print(f"[conformance] lossless: {len(node_cases) - len(failures)} of {len(node_cases)} node cases")
    _report(failures, "homec.load(m).to_onnx() != m")


def test_node_cases_checker(node_cases, node_roundtrips):
    failures, checked, not_valid = [], 0, collections.Counter()
    not_valid_names = []
    for c in node_cases:
        rt, err = node_roundtrips[c.name]
        try:
            onnx.checker.check_model(c.model, full_check=True)
        except Exception as e:  # noqa: BLE001
            not_valid[type(e).__name__] += 1
            not_valid_names.append(c.name)
            continue
        checked += 1
        if rt is None:
            failures.append(f"{c.name}: no round trip ({err})")
            continue
        try:
            onnx.checker.check_model(rt, full_check=True)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{c.name}: checker rejects the round trip: {str(e).splitlines()[0][:200]}")
    print(f"[conformance] checker: {checked - len(failures)} of {checked} checker-valid cases still valid; "
          f"{sum(not_valid.values())} originals rejected by the checker {dict(not_valid)}: "
          f"{', '.join(not_valid_names[:12])}")
    _report(failures, "onnx.checker passes on the original but not on the round trip")


def test_node_cases_onnxruntime(node_cases, node_roundtrips):
    t0 = time.perf_counter()
    failures: list[str] = []
    not_runnable: collections.Counter[str] = collections.Counter()
    not_runnable_names: dict[str, list[str]] = collections.defaultdict(list)
    runnable = same = 0
    for c in node_cases:
        inputs, _expected = c.data_sets[0]
        # Reference: can onnxruntime load and run the original?
        try:
            sess = _session(c.model)
            names = [i.name for i in sess.get_inputs()]
            feeds = dict(zip(names, [_to_feed(x) for x in inputs]))
            ref = sess.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            r = _reason(e)
            not_runnable[r] += 1
            not_runnable_names[r].append(c.name)
            continue
        try:
            ref2 = _session(c.model).run(None, feeds)
        except Exception as e:  # noqa: BLE001
            r = f"flaky in onnxruntime: {_reason(e)}"
            not_runnable[r] += 1
            not_runnable_names[r].append(c.name)
            continue
        if not identical(ref, ref2):
            not_runnable["nondeterministic (two runs of the original differ)"] += 1
            not_runnable_names["nondeterministic (two runs of the original differ)"].append(c.name)
            continue
        runnable += 1
        rt, err = node_roundtrips[c.name]
        if rt is None:
            failures.append(f"{c.name}: no round trip ({err})")
            continue
        try:
            got = _session(rt).run(None, feeds)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{c.name}: onnxruntime runs the original but not the round trip: "
                            f"{str(e).splitlines()[0][:200]}")
            continue
        if not identical(ref, got):
            bad = [i for i, (x, y) in enumerate(zip(ref, got)) if not identical(x, y)]
            failures.append(f"{c.name}: outputs {bad} differ from the original's")
            continue
        same += 1
    reasons = "; ".join(f"{n} {r}" for r, n in not_runnable.most_common())
    print(f"[conformance] onnxruntime: {same} of {runnable} runnable cases identical; "
          f"{sum(not_runnable.values())} not runnable by onnxruntime ({reasons}) "
          f"[{time.perf_counter() - t0:.1f}s]")
    for r, names in sorted(not_runnable_names.items()):
        print(f"[conformance]   not runnable, {r}: {', '.join(names[:12])}"
              f"{' ...' if len(names) > 12 else ''}")
    assert runnable > 1000, "onnxruntime ran suspiciously few node cases"
    _report(failures, "onnxruntime outputs differ after the round trip")


# ---------------------------------------------------------------------------------------
# b) zoo "light" models and PP-OCRv4
# ---------------------------------------------------------------------------------------


def _real_models() -> list:
    paths = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                                          "light", "*.onnx")))
    try:
        import rapidocr_onnxruntime

        paths += sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__),
                                               "models", "*.onnx")))
    except ImportError:
        pass
    return [pytest.param(p, id=os.path.basename(p).removesuffix(".onnx")) for p in paths]


# Dynamic dims of the PP-OCR models, resolved to small sizes (batch, channels, height, width).
OCR_SHAPES = {"det": (1, 3, 64, 64), "rec": (1, 3, 48, 320), "cls": (1, 3, 48, 192)}


def _input_shape(path: str, vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = vi.type.tensor_type.shape.dim
    base = os.path.basename(path)
    for key, shape in OCR_SHAPES.items():
        if f"_{key}_" in base and len(shape) == len(dims):
            return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else s
                         for d, s in zip(dims, shape))
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def _random_feeds(path: str, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(zlib.crc32(os.path.basename(path).encode()))
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = _input_shape(path, vi)
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def test_real_models_present():
    assert len(_real_models()) >= 9 + 3, "expected the 9 light zoo models and 3 PP-OCR models"


@pytest.mark.parametrize("path", _real_models())
def test_real_model(path):
    original = onnx.load(path, load_external_data=False)
    assert onnx.ModelProto.FromString(open(path, "rb").read()) == original

    g = homec.load(path)
    rt = g.to_onnx()

    # (i) lossless
    assert_lossless(original, rt, os.path.basename(path))

    # (ii) checker
    try:
        onnx.checker.check_model(original, full_check=True)
        original_valid = True
    except Exception:  # noqa: BLE001
        original_valid = False
    if original_valid:
        onnx.checker.check_model(rt, full_check=True)

    # (iii) onnxruntime
    feeds = _random_feeds(path, original)
    try:
        ref = _session(original).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"onnxruntime cannot run the original: {_reason(e)}")
    got = _session(rt).run(None, feeds)
    assert len(ref) == len(got)
    for i, (a, b) in enumerate(zip(ref, got)):
        if not identical(a, b):
            again = _session(original).run(None, feeds)
            nondet = not identical(ref[i], again[i])
            pytest.fail(f"output {i} differs after the round trip (max abs diff "
                        f"{np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))}; "
                        f"original nondeterministic: {nondet})")


# ---------------------------------------------------------------------------------------
# c) hand-built models: every corner of the format
# ---------------------------------------------------------------------------------------

OPSET = 21
IR = 10


def _vi(name, elem=TensorProto.FLOAT, shape=(2,), doc=""):
    v = helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None, doc_string=doc)
    return v


def _model(graph, opsets=(("", OPSET),), **kw) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                          ir_version=IR, **kw)
    return m


def _props(msg, **kv):
    for k, v in kv.items():
        p = msg.metadata_props.add()
        p.key, p.value = k, v


def _small_graph(name, inp="gi", out="go", op="Identity"):
    return helper.make_graph([helper.make_node(op, [inp], [out], name=f"{name}_node")], name,
                             [_vi(inp)], [_vi(out)])


def _tensor(name="t", arr=None):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3) if arr is None else arr
    return numpy_helper.from_array(arr, name)


def _sparse(name="sp", linear=True):
    values = numpy_helper.from_array(np.array([1.5, -2.0, 3.25], np.float32), name)
    if linear:
        indices = numpy_helper.from_array(np.array([1, 4, 10], np.int64), f"{name}_idx")
    else:
        indices = numpy_helper.from_array(np.array([[0, 1], [1, 1], [3, 2]], np.int64), f"{name}_idx")
    return helper.make_sparse_tensor(values, indices, [4, 3])


def _type_proto_tensor():
    return helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 3])


def _type_proto_seq():
    return helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.INT64, None))


def case_every_attribute_type():
    attrs = [
        helper.make_attribute("f", 1.5),
        helper.make_attribute("f_nan", float("nan")),
        helper.make_attribute("f_negzero", -0.0),
        helper.make_attribute("f_inf", float("-inf")),
        helper.make_attribute("f_zero", 0.0),
        helper.make_attribute("i", -7),
        helper.make_attribute("i_big", 2**62),
        helper.make_attribute("i_zero", 0),
        helper.make_attribute("s", "utf-8 é ü 字"),
        helper.make_attribute("s_bytes", b"\xff\xfe\x00\x80not utf-8"),
        helper.make_attribute("s_empty", b""),
        helper.make_attribute("t", _tensor("t")),
        helper.make_attribute("g", _small_graph("attr_g")),
        helper.make_attribute("floats", [1.0, -2.5, float("nan"), 1e-45]),
        helper.make_attribute("ints", [1, -2, 2**40, 0]),
        helper.make_attribute("strings", [b"a", b"\xff\x00", b"", "ü".encode()]),
        helper.make_attribute("tensors", [_tensor("t1"), _tensor("t2", np.array([1, 2], np.int64))]),
        helper.make_attribute("graphs", [_small_graph("gs1"), _small_graph("gs2", op="Neg")]),
        helper.make_attribute("sparse_tensor", _sparse("sp1")),
        helper.make_attribute("sparse_tensors", [_sparse("sp2"), _sparse("sp3", linear=False)]),
        helper.make_attribute("tp", _type_proto_tensor()),
        helper.make_attribute("type_protos", [_type_proto_tensor(), _type_proto_seq()]),
        helper.make_attribute("empty_ints", [], attr_type=onnx.AttributeProto.INTS),
        helper.make_attribute("empty_floats", [], attr_type=onnx.AttributeProto.FLOATS),
        helper.make_attribute("empty_strings", [], attr_type=onnx.AttributeProto.STRINGS),
        helper.make_attribute("documented", 3, doc_string="an attribute doc string"),
    ]
    untyped = onnx.AttributeProto(name="untyped_int", i=5)  # very old producers omit `type`
    node = helper.make_node("Everything", ["X"], ["Y"], name="every", domain="com.acme")
    node.attribute.extend(attrs)
    node.attribute.append(untyped)
    g = helper.make_graph([node], "attrs", [_vi("X")], [_vi("Y")])
    return _model(g, opsets=(("", OPSET), ("com.acme", 1)))


def _dtype_tensors(dt: int) -> list[TensorProto]:
    """Tensors of one element type: raw_data and typed-field encodings, empty, scalar, 2-D."""
    name = TensorProto.DataType.Name(dt)
    lname = name.lower()
    if dt == TensorProto.STRING:
        return [helper.make_tensor("t_string", dt, [3], [b"abc", b"\xff\x00", b""]),
                helper.make_tensor("t_string_scalar", dt, [], [b"x"]),
                helper.make_tensor("t_string_empty", dt, [0], [])]
    npdt = helper.tensor_dtype_to_np_dtype(dt)
    vals = np.array([0, 1, 2, 3, 1, 0, 1], dtype=np.float64)  # 7 elements: odd for packed types
    if dt in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        vals = vals + 1j * vals[::-1]
    arr = vals.astype(npdt)
    out = [numpy_helper.from_array(arr, f"raw_{lname}"),
           numpy_helper.from_array(arr.reshape(1, 7), f"raw2d_{lname}"),
           numpy_helper.from_array(arr[:0], f"empty_{lname}"),
           numpy_helper.from_array(arr[:1].reshape(()), f"scalar_{lname}")]
    # The typed-field encoding (float_data, int32_data, ...), not raw_data.
    typed = helper.make_tensor(f"typed_{lname}", dt, [7], arr, raw=False)
    assert not typed.HasField("raw_data")
    out.append(typed)
    return out


ALL_DTYPES = [dt for _, dt in TensorProto.DataType.items() if dt != TensorProto.UNDEFINED]


def _every_dtype_tensors() -> list[TensorProto]:
    out = [t for dt in ALL_DTYPES for t in _dtype_tensors(dt)]
    # Special values that must survive bit for bit.
    out.append(numpy_helper.from_array(
        np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 1e-45], np.float32), "f32_special"))
    out.append(numpy_helper.from_array(np.array([np.nan, -0.0, 6.1e-5], np.float16), "f16_special"))
    weird = numpy_helper.from_array(np.frombuffer(b"\x01\x00\xc0\x7f", np.float32), "nan_payload")
    out.append(weird)
    documented = _tensor("documented_tensor")
    documented.doc_string = "tensor doc"
    _props(documented, origin="hand-built", note="ü")
    out.append(documented)
    seg = _tensor("with_segment")
    seg.segment.begin, seg.segment.end = 0, 6
    out.append(seg)
    big = helper.make_tensor("u64_big", TensorProto.UINT64, [2], [2**64 - 1, 2**63], raw=False)
    out.append(big)
    return out


def case_initializers_every_dtype():
    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"], name="id")], "dtypes",
                          [_vi("X")], [_vi("Y")], initializer=_every_dtype_tensors())
    return _model(g)


def case_constant_attributes_every_dtype():
    nodes = [helper.make_node("Identity", ["X"], ["Y"], name="id")]
    for i, t in enumerate(_every_dtype_tensors()):
        nodes.append(helper.make_node("Constant", [], [f"c{i}"], name=f"const_{t.name}", value=t))
    g = helper.make_graph(nodes, "constants", [_vi("X")], [_vi("Y")])
    return _model(g)


def case_sparse_initializers():
    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"], name="id")], "sparse",
                          [_vi("X")], [_vi("Y")], initializer=[_tensor("dense")],
                          sparse_initializer=[_sparse("sp_lin"), _sparse("sp_2d", linear=False)])
    vals = numpy_helper.from_array(np.array([7, 9], np.int64), "sp_int")
    idx = numpy_helper.from_array(np.array([0, 5], np.int64), "sp_int_idx")
    g.sparse_initializer.append(helper.make_sparse_tensor(vals, idx, [6]))
    return _model(g)


def case_metadata_and_doc_strings():
    x = _vi("X", doc="input doc")
    y = _vi("Y", doc="output doc")
    mid = _vi("mid", doc="value_info doc")
    _props(x, role="input")
    _props(y, role="output", unit="m/s")
    _props(mid, role="intermediate")
    n1 = helper.make_node("Relu", ["X"], ["mid"], name="relu", doc_string="node doc")
    _props(n1, source="layer1", line="42")
    n2 = helper.make_node("Neg", ["mid"], ["Y"], name="neg")
    g = helper.make_graph([n1, n2], "documented", [x], [y], value_info=[mid],
                          doc_string="graph doc", initializer=[])
    _props(g, graph_key="graph value")
    ann = g.quantization_annotation.add()
    ann.tensor_name = "mid"
    q = ann.quant_parameter_tensor_names.add()
    q.key, q.value = "SCALE_TENSOR", "mid_scale"
    m = _model(g, producer_name="homec-tests", producer_version="1.2.3", domain="org.example",
               model_version=7, doc_string="model doc ü")
    _props(m, author="someone", license="Apache-2.0", empty="")
    return m


def case_symbolic_dims_and_denotations():
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, None, "W"])
    x.type.denotation = "TENSOR"
    dims = x.type.tensor_type.shape.dim
    dims[0].denotation = "DATA_BATCH"
    dims[1].denotation = "DATA_CHANNEL"
    dims[3].denotation = "DATA_FEATURE"
    scalar = helper.make_tensor_value_info("S", TensorProto.FLOAT, [])  # rank 0: shape present, empty
    unranked = helper.make_tensor_value_info("U", TensorProto.FLOAT, None)  # no shape at all
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3, None, "W"])
    seq = onnx.ValueInfoProto(name="seq_out")
    seq.type.CopyFrom(_type_proto_seq())
    opt = onnx.ValueInfoProto(name="opt_out")
    opt.type.CopyFrom(helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))
    mp = onnx.ValueInfoProto(name="map_out")
    mp.type.map_type.key_type = TensorProto.STRING
    mp.type.map_type.value_type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    sp = onnx.ValueInfoProto(name="sparse_out")
    sp.type.sparse_tensor_type.elem_type = TensorProto.FLOAT
    sp.type.sparse_tensor_type.shape.dim.add().dim_value = 10
    opq = onnx.ValueInfoProto(name="opaque_out")
    opq.type.opaque_type.domain = "com.acme"
    opq.type.opaque_type.name = "Handle"
    empty_type = onnx.ValueInfoProto(name="untyped_out")
    mid = helper.make_tensor_value_info("mid", TensorProto.FLOAT, ["N", 3, "H", "W"])
    nodes = [
        helper.make_node("Relu", ["X"], ["mid"], name="relu"),
        helper.make_node("Add", ["mid", "S"], ["Y"], name="add"),
        helper.make_node("MakeThings", ["U"], ["seq_out", "opt_out", "map_out", "sparse_out",
                                               "opaque_out", "untyped_out"],
                         name="things", domain="com.acme"),
    ]
    g = helper.make_graph(nodes, "dims", [x, scalar, unranked],
                          [y, seq, opt, mp, sp, opq, empty_type], value_info=[mid])
    return _model(g, opsets=(("", OPSET), ("com.acme", 1)))


def case_value_info_variants():
    """value_info for inputs, outputs, unknown names, twice for one value, in odd order."""
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="r"),
             helper.make_node("Neg", ["a"], ["b"], name="n"),
             helper.make_node("Abs", ["b"], ["Y"], name="abs")]
    vis = [_vi("b", shape=(2,)), _vi("a", shape=("A",)), _vi("X", shape=(2,)),
           _vi("not_a_value", shape=(5,)), _vi("a", TensorProto.DOUBLE, shape=(2,)),
           _vi("Y", shape=(2,))]
    g = helper.make_graph(nodes, "vi", [_vi("X")], [_vi("Y")], value_info=vis)
    return _model(g)


def case_if_with_outer_scope():
    w = _tensor("W", np.array([1.0, 2.0], np.float32))
    inner_then = helper.make_graph(
        [helper.make_node("Mul", ["t", "X"], ["inner_out"], name="inner_mul")],
        "inner_then", [], [_vi("inner_out")])
    inner_else = helper.make_graph([], "inner_else", [], [_vi("W")])  # returns an outer initializer
    then_g = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["then_sum"], name="then_add"),
         helper.make_node("If", ["cond"], ["then_if"], name="nested_if",
                          then_branch=inner_then, else_branch=inner_else),
         helper.make_node("Add", ["then_sum", "then_if"], ["then_out"], name="then_add2")],
        "then", [], [_vi("then_out")], initializer=[_tensor("local_c", np.array([3.0, 4.0], np.float32))])
    else_g = helper.make_graph([], "else", [], [_vi("t")])  # returns an outer node output
    nodes = [helper.make_node("Relu", ["X"], ["t"], name="relu"),
             helper.make_node("If", ["cond"], ["Y"], name="the_if", then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "if_outer",
                          [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _vi("X")],
                          [_vi("Y")], initializer=[w])
    return _model(g)


def case_loop_and_scan():
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "step"], ["v_out"], name="body_add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Mul", ["v_out", "X"], ["scan_out"], name="body_mul")],
        "loop_body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _vi("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("v_out"), _vi("scan_out")])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "elem"], ["acc_out"], name="scan_add"),
         helper.make_node("Sub", ["acc_out", "step"], ["elem_out"], name="scan_sub")],
        "scan_body", [_vi("acc_in"), _vi("elem")], [_vi("acc_out"), _vi("elem_out")])
    nodes = [
        helper.make_node("Loop", ["M", "", "V0"], ["V", "scans"], name="loop", body=body),
        helper.make_node("Scan", ["V0", "seq"], ["acc", "scanned"], name="scan", body=scan_body,
                         num_scan_inputs=1, scan_input_axes=[0], scan_output_directions=[1]),
    ]
    step = _tensor("step", np.array([0.5, 0.25], np.float32))
    g = helper.make_graph(
        nodes, "loops",
        [helper.make_tensor_value_info("M", TensorProto.INT64, []), _vi("V0"), _vi("X"),
         helper.make_tensor_value_info("seq", TensorProto.FLOAT, [4, 2])],
        [_vi("V"), helper.make_tensor_value_info("scans", TensorProto.FLOAT, [None, 2]), _vi("acc"),
         helper.make_tensor_value_info("scanned", TensorProto.FLOAT, [4, 2])],
        initializer=[step])
    return _model(g)


def case_local_functions():
    fn = helper.make_function(
        "com.acme.fn", "ScaledAdd", ["a", "b"], ["c"],
        [helper.make_node("Constant", [], ["alpha_c"], name="alpha_const",
                          value_float=0.0),
         helper.make_node("Mul", ["a", "alpha_c"], ["scaled"], name="mul"),
         helper.make_node("Add", ["scaled", "b"], ["c"], name="add")],
        opset_imports=[helper.make_opsetid("", OPSET)],
        attributes=["alpha"],
        attribute_protos=[helper.make_attribute("beta", 2.0, doc_string="default beta")],
        doc_string="function doc")
    # value_float of the Constant refers to the caller's `alpha`.
    ref = onnx.AttributeProto(name="value_float", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT)
    del fn.node[0].attribute[:]
    fn.node[0].attribute.append(ref)
    fn.value_info.append(_vi("scaled"))
    _props(fn, origin="hand-built")
    fn2 = helper.make_function("com.acme.fn", "ScaledAdd", ["a", "b"], ["c"],
                               [helper.make_node("Sub", ["a", "b"], ["c"], name="sub")],
                               opset_imports=[helper.make_opsetid("", OPSET)], overload="v2")
    nodes = [helper.make_node("ScaledAdd", ["X", "X"], ["t"], name="call", domain="com.acme.fn", alpha=0.5),
             helper.make_node("ScaledAdd", ["t", "X"], ["Y"], name="call2", domain="com.acme.fn")]
    nodes[1].overload = "v2"
    g = helper.make_graph(nodes, "with_functions", [_vi("X")], [_vi("Y")])
    m = _model(g, opsets=(("", OPSET), ("com.acme.fn", 1)), functions=[fn, fn2])
    return m


def case_custom_domain_and_multiple_opsets():
    nodes = [
        helper.make_node("Foo", ["X"], ["a"], name="foo", domain="com.acme", gamma=3),
        helper.make_node("Relu", ["a"], ["b"], name="relu_spelled", domain="ai.onnx"),
        helper.make_node("Normalizer", ["b"], ["c"], name="norm", domain="ai.onnx.ml", norm="MAX"),
        helper.make_node("Gelu", ["c"], ["Y"], name="ms_gelu", domain="com.microsoft"),
    ]
    g = helper.make_graph(nodes, "domains", [_vi("X")], [_vi("Y")])
    return _model(g, opsets=(("com.acme", 1), ("", OPSET), ("ai.onnx.ml", 3), ("com.microsoft", 1)))


def case_opset_import_without_domain_field():
    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g", [_vi("X")], [_vi("Y")])
    m = onnx.ModelProto(ir_version=IR, graph=g)
    m.opset_import.add().version = OPSET  # domain left unset (not even "")
    return m


def case_training_info_present():
    m = case_metadata_and_doc_strings()
    ti = m.training_info.add()
    ti.initialization.CopyFrom(helper.make_graph(
        [helper.make_node("RandomNormal", [], ["W_init"], shape=[2], seed=1.0)], "init", [],
        [_vi("W_init")]))
    ti.algorithm.CopyFrom(helper.make_graph(
        [helper.make_node("Add", ["mid", "mid"], ["grad"], name="fake_grad")], "algo", [], [_vi("grad")]))
    b = ti.initialization_binding.add()
    b.key, b.value = "W", "W_init"
    u = ti.update_binding.add()
    u.key, u.value = "W", "grad"
    m.training_info.add()  # an empty one too
    return m


def case_training_info_absent():
    m = case_metadata_and_doc_strings()
    assert len(m.training_info) == 0
    return m


def case_device_configuration():
    m = case_metadata_and_doc_strings()
    cfg = m.configuration.add()
    cfg.name, cfg.num_devices = "two_npus", 2
    cfg.device.extend(["npu0", "npu1"])
    ndc = m.graph.node[0].device_configurations.add()
    ndc.configuration_id = "two_npus"
    ndc.pipeline_stage = 1
    return m


def case_node_names():
    nodes = [
        helper.make_node("Relu", ["X"], ["a"]),  # no name
        helper.make_node("Neg", ["a"], ["b"], name="dup"),
        helper.make_node("Abs", ["b"], ["c"], name="dup"),
        helper.make_node("Relu", ["c"], ["d"], name=""),
        helper.make_node("Identity", ["d"], ["Y"], name="ünïcödé name with spaces"),
    ]
    nodes[3].name = ""  # explicitly present but empty
    g = helper.make_graph(nodes, "", [_vi("X")], [_vi("Y")])  # empty graph name
    return _model(g)


def case_explicit_default_fields():
    """proto2 field presence: fields explicitly set to their default value."""
    n = helper.make_node("Relu", ["X"], ["Y"])
    n.domain = ""
    n.doc_string = ""
    n.overload = ""
    g = helper.make_graph([n], "g", [_vi("X")], [_vi("Y")])
    g.doc_string = ""
    g.input[0].doc_string = ""
    m = _model(g)
    m.producer_name = ""
    m.domain = ""
    m.model_version = 0
    m.doc_string = ""
    return m


def case_optional_io_and_edges():
    mx = _tensor("mx", np.array(1.0, np.float32))
    nodes = [
        helper.make_node("Clip", ["X", "", "mx"], ["clipped"], name="clip_no_min"),
        helper.make_node("Dropout", ["clipped"], ["dropped", ""], name="drop_no_mask"),
        helper.make_node("Relu", ["dropped"], ["Y"], name="relu"),
        helper.make_node("Clip", ["X", "", ""], ["trailing"], name="clip_trailing_empty"),
    ]
    g = helper.make_graph(
        nodes, "edges", [_vi("X"), _vi("W_in")],
        [_vi("Y"), _vi("trailing"), _vi("X"), helper.make_tensor_value_info("mx", TensorProto.FLOAT, [])],
        initializer=[mx, _tensor("W_in", np.array([1.0, 2.0], np.float32))])  # IR<4 style input+initializer
    return _model(g)


def case_initializer_as_input_ir3():
    """Old models list every initializer among the graph inputs (as the zoo models do)."""
    w = _tensor("W", np.ones((2,), np.float32))
    g = helper.make_graph([helper.make_node("Add", ["X", "W"], ["Y"], name="add")], "ir3",
                          [_vi("X"), _vi("W")], [_vi("Y")], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    return m


EXTRA_CASES = {name.removeprefix("case_"): fn for name, fn in sorted(globals().items())
               if name.startswith("case_") and callable(fn)}


@pytest.mark.parametrize("name", sorted(EXTRA_CASES))
def test_lossless_extra(name, tmp_path):
    m = EXTRA_CASES[name]()
    assert onnx.ModelProto.FromString(m.SerializeToString()) == m  # the case itself is sound

    # In memory.
    g = homec.load(m)
    assert_lossless(m, g.to_onnx(), f"{name} (in memory)")
    assert_lossless(m, g.to_onnx(), f"{name} (second to_onnx)")

    # Through a file written by homec.save and read back by homec.load.
    path = tmp_path / f"{name}.onnx"
    homec.save(g, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert_lossless(m, onnx.ModelProto.FromString(path.read_bytes()), f"{name} (file written by save)")
    assert_lossless(m, homec.load(path).to_onnx(), f"{name} (save + load)")
    assert_lossless(m, homec.load(str(path)).to_onnx(), f"{name} (save + load str path)")

    # Saving the ModelProto directly gives the same bytes as saving the loaded graph.
    path2 = tmp_path / "again" / f"{name}.onnx"
    path2.parent.mkdir()
    homec.save(m, path2)
    assert path2.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("dt", ALL_DTYPES, ids=[TensorProto.DataType.Name(d).lower() for d in ALL_DTYPES])
def test_lossless_each_dtype(dt):
    """One element type at a time (initializers and Constant attributes), for a precise report."""
    tensors = _dtype_tensors(dt)
    nodes = [helper.make_node("Identity", ["X"], ["Y"], name="id")]
    nodes += [helper.make_node("Constant", [], [f"c{i}"], name=f"const{i}", value=t) for i, t in enumerate(tensors)]
    g = helper.make_graph(nodes, "one_dtype", [_vi("X")], [_vi("Y")], initializer=tensors)
    m = _model(g)
    try:
        graph = homec.load(m)
    except homec.HomecError as e:
        pytest.fail(f"a valid {TensorProto.DataType.Name(dt)} tensor is rejected: {e}")
    assert_lossless(m, graph.to_onnx(), TensorProto.DataType.Name(dt))


def test_non_utf8_string_tensor_decodes():
    """ONNX strings are bytes; Tensor.numpy() must not assume UTF-8."""
    t = helper.make_tensor("S", TensorProto.STRING, [3], [b"ok", b"\xff\xfe", b""])
    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "s", [_vi("X")], [_vi("Y")],
                          initializer=[t])
    arr = homec.load(_model(g)).initializers["S"].const.numpy()
    as_bytes = [x.encode() if isinstance(x, str) else x for x in arr.tolist()]
    assert arr.shape == (3,) and as_bytes == [b"ok", b"\xff\xfe", b""]


def test_every_dtype_decodes_like_onnx():
    """Tensor.numpy() of every initializer equals onnx.numpy_helper.to_array (bit for bit)."""
    m = case_initializers_every_dtype()
    g = homec.load(m)
    bad = []
    for t in m.graph.initializer:
        if t.HasField("segment"):
            continue  # onnx cannot decode segmented tensors either
        if t.data_type == TensorProto.STRING:
            continue  # see test_non_utf8_string_tensor_decodes (onnx cannot decode non-UTF-8)
        ref = numpy_helper.to_array(t)
        try:
            got = g.initializers[t.name].const.numpy()
        except Exception as e:  # noqa: BLE001
            bad.append(f"{t.name}: {type(e).__name__}: {e}")
            continue
        if not (got.dtype == ref.dtype and got.shape == ref.shape and
                (got.tolist() == ref.tolist() if ref.dtype == object else got.tobytes() == ref.tobytes())):
            bad.append(f"{t.name}: {got.dtype}{got.shape} vs {ref.dtype}{ref.shape}")
    assert not bad, bad
