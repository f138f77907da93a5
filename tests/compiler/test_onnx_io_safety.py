"""Safety of homec.load / homec.save on untrusted or broken input.

Every bad input must raise homec.errors.InvalidModelError (exit code 3) whose str() is a
single line naming the model file, and loading must never write or change anything.
Saving is atomic: a failed save leaves no partial or temporary file behind and leaves an
existing output untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import homec
from homec.errors import ExitCode, InvalidModelError, OutputError

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 8


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple]:
    """Everything under `root` (without following symlinks): kind, size, content hash."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                snap[rel] = ("dir",)
            elif not p.is_file():  # FIFO, socket, device: never open it
                snap[rel] = ("special", stat.S_IFMT(p.lstat().st_mode))
            else:
                st = p.stat()
                if st.st_size > 64 * 1024 * 1024:  # the sparse 2 GB file: do not hash it
                    snap[rel] = ("file", st.st_size, st.st_mtime_ns)
                else:
                    snap[rel] = ("file", st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return snap


def _assert_one_line_naming(err: BaseException, path: os.PathLike | str) -> str:
    msg = str(err)
    assert msg.strip(), "the error message is empty"
    assert "\n" not in msg and "\r" not in msg, f"the error message is not one line: {msg!r}"
    p = os.fspath(path)
    assert p in msg or os.path.realpath(p) in msg, f"the error message does not name {p!r}: {msg!r}"
    # It must say more than just the path.
    rest = msg.replace(p, "").replace(os.path.realpath(p), "").strip(" :")
    assert len(rest) >= 8, f"the error message does not explain the problem: {msg!r}"
    return msg


def assert_load_rejected(path, root: Path, *, mentions: tuple[str, ...] = ()) -> str:
    """homec.load(path) raises InvalidModelError naming `path`; nothing under root changes.

    `mentions`: the message must contain at least one of these (case-insensitive) so that
    the user learns what is wrong, not just that something is.
    """
    before = _snapshot(root)
    with pytest.raises(InvalidModelError) as ei:
        homec.load(path)
    assert ei.value.exit_code == ExitCode.INVALID_MODEL == 3
    msg = _assert_one_line_naming(ei.value, path)
    if mentions:
        assert any(m.lower() in msg.lower() for m in mentions), (
            f"the message should mention one of {mentions}: {msg!r}")
    assert _snapshot(root) == before, "loading a bad model wrote or changed files"
    return msg


def _write(path: Path, model: onnx.ModelProto) -> Path:
    """Write the raw protobuf (never through onnx.save, which may touch external data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _model(nodes, inputs, outputs, initializers=(), *, opsets=OPSET, value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers),
                              value_info=list(value_info))
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION,
                             producer_name="homec-tests")


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _valid_model() -> onnx.ModelProto:
    """A small valid model with initializers (Y = relu(X @ W + B))."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["xw"], name="mm"),
        helper.make_node("Add", ["xw", "B"], ["xwb"], name="add"),
        helper.make_node("Relu", ["xwb"], ["Y"], name="relu"),
    ]
    return _model(nodes, [_f32("X", [2, 8])], [_f32("Y", [2, 4])], [w, b])


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path, monkeypatch):
    # Anything a loader writes by accident next to the current directory shows up in
    # the tmp_path snapshot instead of polluting the checkout.
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------------------
# files that are not there / not files / not readable
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [True, False], ids=["Path", "str"])
def test_missing_file(tmp_path, as_path):
    p = tmp_path / "does_not_exist.onnx"
    assert_load_rejected(p if as_path else str(p), tmp_path)
    assert not p.exists()


def test_directory_instead_of_file(tmp_path):
    d = tmp_path / "model.onnx"
    d.mkdir()
    assert_load_rejected(d, tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can read a chmod 000 file; see test_unreadable_parent_is_a_file")
def test_unreadable_file_chmod_000(tmp_path):
    p = _write(tmp_path / "model.onnx", _valid_model())
    p.chmod(0)
    try:
        assert_load_rejected(p, tmp_path)
    finally:
        p.chmod(0o644)


def test_unreadable_parent_is_a_file(tmp_path):
    """Opening fails with ENOTDIR (works as root too, unlike chmod 000)."""
    (tmp_path / "not_a_dir").write_bytes(_valid_model().SerializeToString())
    assert_load_rejected(tmp_path / "not_a_dir" / "model.onnx", tmp_path)


# ---------------------------------------------------------------------------------------
# bytes that are not an ONNX model
# ---------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert_load_rejected(p, tmp_path)


def _parses_to_usable_model(data: bytes) -> bool:
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except Exception:
        return False
    return m.HasField("graph") and len(m.opset_import) > 0


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 100, 1000, 4096, 65536])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path, size, seed):
    data = np.random.default_rng(seed * 1000 + size).bytes(size)
    assert not _parses_to_usable_model(data)  # precondition of the test itself
    p = tmp_path / "random.onnx"
    p.write_bytes(data)
    assert_load_rejected(p, tmp_path)


def _real_model_bytes(which: str) -> bytes:
    if which == "handmade":
        return _valid_model().SerializeToString()
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return path.read_bytes()


@pytest.mark.parametrize("which", ["handmade", "squeezenet"])
@pytest.mark.parametrize("cut", ["1", "2", "5", "1/4", "1/2", "3/4", "-2", "-1"])
def test_truncated_model(tmp_path, which, cut):
    data = _real_model_bytes(which)
    n = len(data)
    if "/" in cut:
        a, b = map(int, cut.split("/"))
        offset = n * a // b
    else:
        offset = int(cut) if int(cut) > 0 else n + int(cut)
    truncated = data[:offset]
    assert 0 < offset < n
    assert not _parses_to_usable_model(truncated)  # precondition: the cut broke the model
    p = tmp_path / "truncated.onnx"
    p.write_bytes(truncated)
    assert_load_rejected(p, tmp_path)


def test_protobuf_without_graph(tmp_path):
    m = onnx.ModelProto(ir_version=IR_VERSION, producer_name="no-graph")
    m.opset_import.extend(OPSET)
    p = _write(tmp_path / "nograph.onnx", m)
    assert onnx.ModelProto.FromString(p.read_bytes()) == m  # it does parse
    assert_load_rejected(p, tmp_path, mentions=("graph",))


# ---------------------------------------------------------------------------------------
# structurally invalid graphs
# ---------------------------------------------------------------------------------------


def test_graph_with_cycle(tmp_path):
    nodes = [
        helper.make_node("Add", ["X", "b"], ["a"], name="node_a"),
        helper.make_node("Relu", ["a"], ["b"], name="node_b"),
    ]
    m = _model(nodes, [_f32("X", [2])], [_f32("b", [2])])
    p = _write(tmp_path / "cycle.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("cycle", "node_a", "node_b", "cyclic"))


def test_value_with_two_producers(tmp_path):
    nodes = [
        helper.make_node("Relu", ["X"], ["dup_value"], name="first"),
        helper.make_node("Neg", ["X"], ["dup_value"], name="second"),
    ]
    m = _model(nodes, [_f32("X", [2])], [_f32("dup_value", [2])])
    p = _write(tmp_path / "twoproducers.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("dup_value",))


def test_value_produced_and_graph_input(tmp_path):
    nodes = [helper.make_node("Relu", ["X"], ["X"], name="redefines_input")]
    m = _model(nodes, [_f32("X", [2])], [_f32("X", [2])])
    p = _write(tmp_path / "redefine.onnx", m)
    assert_load_rejected(p, tmp_path)


def test_undefined_node_input(tmp_path):
    nodes = [helper.make_node("Add", ["X", "ghost_value"], ["Y"], name="add")]
    m = _model(nodes, [_f32("X", [2])], [_f32("Y", [2])])
    p = _write(tmp_path / "undefined.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("ghost_value",))


def test_undefined_graph_output(tmp_path):
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="relu")]
    m = _model(nodes, [_f32("X", [2])], [_f32("nowhere", [2])])
    p = _write(tmp_path / "undefined_output.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("nowhere",))


def test_custom_domain_without_opset_import(tmp_path):
    nodes = [helper.make_node("Frobnicate", ["X"], ["Y"], name="frob", domain="com.example")]
    m = _model(nodes, [_f32("X", [2])], [_f32("Y", [2])])
    p = _write(tmp_path / "nodomain.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("com.example",))


def _if_model(then_nodes, then_outputs, *, outer_nodes=(), outer_outputs=None, then_inits=()):
    then_g = helper.make_graph(list(then_nodes), "then", [], then_outputs, initializer=list(then_inits))
    else_g = helper.make_graph([helper.make_node("Identity", ["X"], ["else_out"], name="else_id")],
                               "else", [], [_f32("else_out", [2])])
    nodes = [helper.make_node("If", ["cond"], ["Y"], name="the_if", then_branch=then_g,
                              else_branch=else_g), *outer_nodes]
    inputs = [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _f32("X", [2])]
    return _model(nodes, inputs, outer_outputs or [_f32("Y", [2])])


def test_cycle_inside_subgraph(tmp_path):
    m = _if_model([helper.make_node("Relu", ["sub_b"], ["sub_a"], name="sub_node_a"),
                   helper.make_node("Neg", ["sub_a"], ["sub_b"], name="sub_node_b")],
                  [_f32("sub_b", [2])])
    p = _write(tmp_path / "subcycle.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("cycle", "sub_node_a", "sub_node_b", "cyclic"))


def test_cycle_through_subgraph_capture(tmp_path):
    # The If's branch reads B, and B is computed from the If's output.
    m = _if_model([helper.make_node("Relu", ["B"], ["then_out"], name="reads_b")],
                  [_f32("then_out", [2])],
                  outer_nodes=[helper.make_node("Neg", ["Y"], ["B"], name="makes_b")],
                  outer_outputs=[_f32("B", [2])])
    p = _write(tmp_path / "capturecycle.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("cycle", "the_if", "makes_b", "cyclic"))


def test_subgraph_redefines_outer_value(tmp_path):
    """SSA holds across scopes: a branch may not produce a name the outer graph defines."""
    m = _if_model([helper.make_node("Relu", ["X"], ["X"], name="shadows_x")], [_f32("X", [2])])
    p = _write(tmp_path / "shadow.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("'X'", '"X"', "shadows_x"))


def test_undefined_input_inside_subgraph(tmp_path):
    m = _if_model([helper.make_node("Relu", ["sub_ghost"], ["then_out"], name="r")],
                  [_f32("then_out", [2])])
    p = _write(tmp_path / "subundef.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("sub_ghost",))


def test_custom_domain_without_opset_import_inside_subgraph(tmp_path):
    m = _if_model([helper.make_node("Frob", ["X"], ["then_out"], name="f", domain="com.example")],
                  [_f32("then_out", [2])])
    p = _write(tmp_path / "subdomain.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("com.example",))


def test_duplicate_graph_input(tmp_path):
    m = _model([helper.make_node("Relu", ["X"], ["Y"])], [_f32("X", [2]), _f32("X", [2])],
               [_f32("Y", [2])])
    p = _write(tmp_path / "dupinput.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("'X'", '"X"'))


def test_duplicate_initializer(tmp_path):
    w = numpy_helper.from_array(np.ones(2, np.float32), "W")
    m = _model([helper.make_node("Add", ["X", "W"], ["Y"])], [_f32("X", [2])], [_f32("Y", [2])], [w, w])
    p = _write(tmp_path / "dupinit.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("'W'", '"W"'))


@pytest.mark.parametrize("raw_len", [20, 28, 0])
def test_inline_tensor_data_size_mismatch(tmp_path, raw_len):
    """raw_data that does not hold dims' worth of elements is malformed, not a later crash."""
    t = numpy_helper.from_array(W_VALUES, "W")
    t.raw_data = t.raw_data[:raw_len] if raw_len <= 24 else t.raw_data + b"\0" * (raw_len - 24)
    m = _model([helper.make_node("Add", ["X", "W"], ["Y"])], [_f32("X", [2, 3])], [_f32("Y", [2, 3])], [t])
    p = _write(tmp_path / "badinline.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("W",))


def test_inline_tensor_negative_dims(tmp_path):
    t = numpy_helper.from_array(W_VALUES, "W")
    del t.dims[:]
    t.dims.extend([-2, -3])
    m = _model([helper.make_node("Add", ["X", "W"], ["Y"])], [_f32("X", [2, 3])], [_f32("Y", [2, 3])], [t])
    p = _write(tmp_path / "negdims.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("W",))


def _alarm(seconds: int):
    import signal

    def on_alarm(signum, frame):
        raise TimeoutError(f"homec.load blocked for {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    return lambda: (signal.alarm(0), signal.signal(signal.SIGALRM, old))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_opened(tmp_path):
    """Opening a FIFO for reading blocks forever: it must be refused without opening it."""
    p = tmp_path / "model.onnx"
    os.mkfifo(p)
    restore = _alarm(20)
    try:
        assert_load_rejected(p, tmp_path)
    finally:
        restore()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_character_device(tmp_path):
    restore = _alarm(20)
    try:
        assert_load_rejected("/dev/zero", tmp_path)
    finally:
        restore()


# ---------------------------------------------------------------------------------------
# size limit
# ---------------------------------------------------------------------------------------


def test_file_over_2gb_rejected_by_size_before_reading(tmp_path):
    p = tmp_path / "huge.onnx"
    with open(p, "wb") as f:
        f.write(_valid_model().SerializeToString())
        f.truncate(2**31 + 10)  # sparse: costs no disk
    assert p.stat().st_size == 2**31 + 10
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        msg = assert_load_rejected(p, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    assert peak < 256 * 1024 * 1024, f"the loader read the 2 GB file into memory (peak {peak} bytes)"
    assert elapsed < 10, f"rejecting by size should be immediate, took {elapsed:.1f}s"
    assert re.search(r"(?i)size|large|big|GB|GiB|bytes|limit|2147483", msg), (
        f"the message should say the file is too large: {msg!r}")


# ---------------------------------------------------------------------------------------
# external data
# ---------------------------------------------------------------------------------------

W_VALUES = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1.0


def _ext_tensor(name: str, array: np.ndarray, location: str, offset=None, length=None) -> TensorProto:
    t = numpy_helper.from_array(array, name)
    set_external_data(t, location=location, offset=offset, length=length)
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    return t


def _ext_model(location: str, offset=None, length=None) -> onnx.ModelProto:
    t = _ext_tensor("W", W_VALUES, location, offset, length)
    nodes = [helper.make_node("Add", ["X", "W"], ["Y"], name="add")]
    return _model(nodes, [_f32("X", [2, 3])], [_f32("Y", [2, 3])], [t])


def _ext_setup(tmp_path: Path, location: str, offset=None, length=None) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    return _write(model_dir / "model.onnx", _ext_model(location, offset, length))


def test_external_data_valid_loads(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    w1 = W_VALUES
    w2 = np.arange(12, dtype=np.int64).reshape(3, 4) - 5
    w3 = np.linspace(-1, 1, 5, dtype=np.float64)
    blob = bytearray(w1.tobytes())
    blob += b"\0" * (64 - len(blob))
    off2 = len(blob)
    blob += w2.tobytes()
    blob += b"\0" * (4096 - len(blob))
    off3 = len(blob)
    blob += w3.tobytes()  # last tensor: length omitted (reads to the end of the file)
    (model_dir / "weights.bin").write_bytes(bytes(blob))
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "more.bin").write_bytes(w1.tobytes())
    tensors = [
        _ext_tensor("W1", w1, "weights.bin", 0, w1.nbytes),
        _ext_tensor("W2", w2, "weights.bin", off2, w2.nbytes),
        _ext_tensor("W3", w3, "weights.bin", off3),
        _ext_tensor("W4", w1, "sub/more.bin"),
    ]
    nodes = [
        helper.make_node("Add", ["X", "W1"], ["a"], name="add1"),
        helper.make_node("Add", ["a", "W4"], ["Y"], name="add2"),
        helper.make_node("Identity", ["W2"], ["Y2"], name="id2"),
        helper.make_node("Identity", ["W3"], ["Y3"], name="id3"),
    ]
    m = _model(nodes, [_f32("X", [2, 3])],
               [_f32("Y", [2, 3]), helper.make_tensor_value_info("Y2", TensorProto.INT64, [3, 4]),
                helper.make_tensor_value_info("Y3", TensorProto.DOUBLE, [5])], tensors)
    p = _write(model_dir / "model.onnx", m)
    before = _snapshot(tmp_path)

    g = homec.load(p)

    assert _snapshot(tmp_path) == before
    inits = g.initializers
    for name, expected in [("W1", w1), ("W2", w2), ("W3", w3), ("W4", w1)]:
        arr = inits[name].const.numpy()
        assert arr.dtype == expected.dtype and arr.shape == expected.shape, name
        assert np.array_equal(arr, expected), name

    # The loaded graph saved elsewhere is self-contained and computes the right thing.
    out = tmp_path / "out" / "inline.onnx"
    out.parent.mkdir()
    homec.save(g, out, external_data=False)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.ones((2, 3), np.float32)
    y, y2, y3 = sess.run(None, {"X": x})
    assert np.array_equal(y, x + w1 + w1)
    assert np.array_equal(y2, w2)
    assert np.array_equal(y3, w3)


def test_external_data_absolute_location(tmp_path):
    data = tmp_path / "model" / "weights.bin"
    data.parent.mkdir()
    data.write_bytes(W_VALUES.tobytes())
    p = _ext_setup(tmp_path, str(data))  # an absolute path to a perfectly good data file
    assert os.path.isabs(str(data))
    assert_load_rejected(p, tmp_path, mentions=(str(data), "absolute", "W"))


def test_external_data_absolute_location_system_file(tmp_path):
    p = _ext_setup(tmp_path, "/etc/passwd", 0, W_VALUES.nbytes)
    assert_load_rejected(p, tmp_path, mentions=("/etc/passwd", "absolute", "W"))


@pytest.mark.parametrize("location", ["../outside/weights.bin", "sub/../weights.bin",
                                      "sub/../../outside/weights.bin", "./../outside/weights.bin"])
def test_external_data_dotdot(tmp_path, location):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "weights.bin").write_bytes(W_VALUES.tobytes())
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "weights.bin").write_bytes(W_VALUES.tobytes())
    p = _ext_setup(tmp_path, location)
    assert_load_rejected(p, tmp_path, mentions=(location, "..", "W"))


def test_external_data_outside_through_symlinked_dir(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(W_VALUES.tobytes())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "linkdir").symlink_to(outside, target_is_directory=True)
    p = _ext_setup(tmp_path, "linkdir/weights.bin")
    assert_load_rejected(p, tmp_path, mentions=("linkdir/weights.bin", "outside", "symlink", "W"))


def test_external_data_file_is_symlink(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "real.bin").write_bytes(W_VALUES.tobytes())
    # The link even points inside the model folder: a symlinked data file is refused as such.
    (model_dir / "weights.bin").symlink_to(model_dir / "real.bin")
    p = _ext_setup(tmp_path, "weights.bin")
    assert_load_rejected(p, tmp_path, mentions=("weights.bin", "symlink", "W"))


def test_external_data_file_is_symlink_to_outside(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(W_VALUES.tobytes())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").symlink_to(tmp_path / "outside" / "secret.bin")
    p = _ext_setup(tmp_path, "weights.bin")
    assert_load_rejected(p, tmp_path, mentions=("weights.bin", "symlink", "W"))


@pytest.mark.parametrize("offset,length", [(8, 24), (0, 48), (24, 24), (1000, None), (25, None)])
def test_external_data_range_exceeds_file(tmp_path, offset, length):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(W_VALUES.tobytes())  # 24 bytes
    p = _ext_setup(tmp_path, "weights.bin", offset, length)
    assert_load_rejected(p, tmp_path, mentions=("weights.bin", "W", "offset", "length"))


@pytest.mark.parametrize("length", [20, 28, 0, 1])
def test_external_data_length_mismatch(tmp_path, length):
    (tmp_path / "model").mkdir()
    # The file is large enough for any of the lengths: only the size mismatch is wrong.
    (tmp_path / "model" / "weights.bin").write_bytes(W_VALUES.tobytes() + b"\0" * 64)
    p = _ext_setup(tmp_path, "weights.bin", 0, length)
    assert_load_rejected(p, tmp_path, mentions=("weights.bin", "W", "length", "size", "bytes"))


def test_external_data_without_length_wrong_size(tmp_path):
    """No `length`: the rest of the file from `offset` must still be the tensor's size."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(W_VALUES.tobytes()[:20])
    p = _ext_setup(tmp_path, "weights.bin")
    assert_load_rejected(p, tmp_path, mentions=("weights.bin", "W", "length", "size", "bytes"))


def test_external_data_file_missing(tmp_path):
    p = _ext_setup(tmp_path, "weights.bin", 0, W_VALUES.nbytes)
    assert_load_rejected(p, tmp_path, mentions=("weights.bin",))


def test_external_data_location_is_directory(tmp_path):
    (tmp_path / "model" / "weights.bin").mkdir(parents=True)
    p = _ext_setup(tmp_path, "weights.bin", 0, W_VALUES.nbytes)
    assert_load_rejected(p, tmp_path, mentions=("weights.bin",))


def test_external_data_location_with_nul_byte(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w").write_bytes(W_VALUES.tobytes())
    p = _ext_setup(tmp_path, "w\x00.bin", 0, W_VALUES.nbytes)
    assert_load_rejected(p, tmp_path, mentions=("W", "location"))


@pytest.mark.parametrize("offset,length", [("abc", "24"), ("0", "x"), ("-8", "24"), ("0", "-24"),
                                           ("1e3", "24")])
def test_external_data_malformed_numbers(tmp_path, offset, length):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(W_VALUES.tobytes() * 4)
    m = _ext_model("weights.bin")
    t = m.graph.initializer[0]
    del t.external_data[:]
    for k, v in (("location", "weights.bin"), ("offset", offset), ("length", length)):
        e = t.external_data.add()
        e.key, e.value = k, v
    p = _write(tmp_path / "model" / "model.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("W", "offset", "length"))


@pytest.mark.parametrize("dims", [[2**62, 4], [2**31, 2**31, 4], [-2, -3]])
def test_external_data_absurd_dims(tmp_path, dims):
    """dims whose element count overflows int64 (or is negative) must not pass the size check."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(W_VALUES.tobytes() if min(dims) < 0 else b"")
    m = _ext_model("weights.bin")
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend(dims)
    p = _write(tmp_path / "model" / "model.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("W",))


def test_external_data_in_constant_attribute_is_checked(tmp_path):
    t = _ext_tensor("c", W_VALUES, "/etc/passwd", 0, W_VALUES.nbytes)
    nodes = [helper.make_node("Constant", [], ["W"], name="const", value=t),
             helper.make_node("Add", ["X", "W"], ["Y"], name="add")]
    m = _model(nodes, [_f32("X", [2, 3])], [_f32("Y", [2, 3])])
    p = _write(tmp_path / "model" / "model.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("/etc/passwd", "absolute"))


def test_external_data_in_subgraph_initializer_is_checked(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(np.ones(2, np.float32).tobytes())
    t = _ext_tensor("S", np.ones(2, np.float32), "../outside/w.bin")
    m = _if_model([helper.make_node("Add", ["X", "S"], ["then_out"], name="a")],
                  [_f32("then_out", [2])], then_inits=[t])
    p = _write(tmp_path / "model" / "model.onnx", m)
    assert_load_rejected(p, tmp_path, mentions=("../outside/w.bin", ".."))


def test_external_data_from_bytes_or_proto_is_refused():
    """Without a file path there is no folder to resolve `location` against."""
    m = _ext_model("weights.bin", 0, 24)
    for src in (m, m.SerializeToString()):
        with pytest.raises(InvalidModelError) as ei:
            homec.load(src)
        assert "\n" not in str(ei.value)


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------


def _bigger_model() -> onnx.ModelProto:
    """A model whose initializers are large enough for any external-data threshold."""
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((64,)).astype(np.float32), "B")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float16), "W2")
    shape = numpy_helper.from_array(np.array([4, 16], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["xw"], name="mm"),
        helper.make_node("Add", ["xw", "B"], ["h"], name="add"),
        helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
        helper.make_node("Cast", ["t"], ["t16"], name="cast", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["t16", "W2"], ["z"], name="mm2"),
        helper.make_node("Reshape", ["z", "shape"], ["Y"], name="reshape"),
    ]
    return _model(nodes, [_f32("X", [2, 64])],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [4, 16])],
                  [w, b, w2, shape])


def _run_ort(model_or_path, feeds):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _data_name(path: Path) -> str:
    return f"{path.name}.data"


def _external_locations(path: Path) -> set[str]:
    m = onnx.load(str(path), load_external_data=False)
    locs = set()
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            locs.add({e.key: e.value for e in t.external_data}["location"])
    return locs


@pytest.mark.parametrize("what", ["graph", "model"])
def test_save_external_data_roundtrip(tmp_path, what):
    m = _bigger_model()
    src = homec.load(m) if what == "graph" else m
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "net.onnx"

    homec.save(src, out, external_data=True)

    data = out_dir / _data_name(out)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([out.name, data.name]), (
        "save(external_data=True) must write exactly the model and <name>.data (no temp files)")
    assert data.stat().st_size >= 64 * 64 * 4
    assert _external_locations(out) == {data.name}, "tensors must reference the .data file by a relative name"
    assert out.stat().st_size < 64 * 64 * 4, "the big weights must not also be inline"

    g2 = homec.load(out)
    assert np.array_equal(g2.initializers["W"].const.numpy(), numpy_helper.to_array(m.graph.initializer[0]))

    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    ref = _run_ort(m, {"X": x})
    via_file = _run_ort(out, {"X": x})
    inline = tmp_path / "inline.onnx"
    homec.save(g2, inline, external_data=False)
    via_reload = _run_ort(inline, {"X": x})
    for a, b, c in zip(ref, via_file, via_reload):
        assert a.dtype == b.dtype == c.dtype
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_save_external_data_reload_is_lossless(tmp_path):
    """Moving weights out to <name>.data and back must not change the model proto."""
    m = _bigger_model()
    out = tmp_path / "net.onnx"
    homec.save(m, out, external_data=True)
    back = homec.load(out).to_onnx()
    if back != m:
        diffs = [(a.name, [f.name for f, _ in a.ListFields()], [f.name for f, _ in b.ListFields()])
                 for a, b in zip(m.graph.initializer, back.graph.initializer) if a != b]
        pytest.fail(f"save(external_data=True) + load changed initializers "
                    f"(name, original fields, reloaded fields): {diffs}")


def test_save_is_deterministic(tmp_path):
    m = _bigger_model()
    outs = []
    for sub in ("a", "b"):
        d = tmp_path / sub
        d.mkdir()
        homec.save(homec.load(m), d / "net.onnx", external_data=True)
        outs.append(((d / "net.onnx").read_bytes(), (d / "net.onnx.data").read_bytes()))
    # Save again over the first output.
    homec.save(homec.load(m), tmp_path / "a" / "net.onnx", external_data=True)
    again = ((tmp_path / "a" / "net.onnx").read_bytes(), (tmp_path / "a" / "net.onnx.data").read_bytes())
    assert outs[0][0] == outs[1][0] == again[0], "model files differ between saves"
    assert outs[0][1] == outs[1][1] == again[1], "data files differ between saves"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["net.onnx", "net.onnx.data"]

    # Inline saves are deterministic too.
    homec.save(homec.load(m), tmp_path / "i1.onnx", external_data=False)
    homec.save(homec.load(m), tmp_path / "i2.onnx", external_data=False)
    assert (tmp_path / "i1.onnx").read_bytes() == (tmp_path / "i2.onnx").read_bytes()


@pytest.mark.parametrize("external_data", [None, False])
def test_save_small_model_inline(tmp_path, external_data):
    m = _bigger_model()
    out = tmp_path / "net.onnx"
    homec.save(homec.load(m), out, external_data=external_data)
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]
    assert onnx.load(str(out)) == m
    assert homec.load(out).to_onnx() == m


def test_save_auto_external_data_above_threshold(tmp_path, monkeypatch):
    """external_data=None switches to <name>.data when the model would be too big.

    A real 2 GB model is too costly for a unit test, so the threshold is lowered."""
    import homec.onnx_io as onnx_io

    monkeypatch.setattr(onnx_io, "AUTO_EXTERNAL_THRESHOLD", 8 * 1024)
    m = _bigger_model()
    out = tmp_path / "net.onnx"
    homec.save(m, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net.onnx.data"]
    assert _external_locations(out) == {"net.onnx.data"}
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    for a, b in zip(_run_ort(m, {"X": x}), _run_ort(out, {"X": x})):
        assert a.tobytes() == b.tobytes()


def test_save_into_missing_directory(tmp_path):
    before = _snapshot(tmp_path)
    target = tmp_path / "no_such_dir" / "net.onnx"
    for ext in (False, True):
        with pytest.raises(OutputError) as ei:
            homec.save(homec.load(_bigger_model()), target, external_data=ext)
        assert ei.value.exit_code == ExitCode.OUTPUT_IO
        msg = str(ei.value)
        assert "\n" not in msg and str(target.parent) in msg, msg
    assert _snapshot(tmp_path) == before, "a failed save created files"


@pytest.mark.parametrize("external_data", [False, True])
def test_save_onto_a_directory(tmp_path, external_data):
    target = tmp_path / "net.onnx"
    target.mkdir()
    (target / "keep").write_bytes(b"keep")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError):
        homec.save(homec.load(_bigger_model()), target, external_data=external_data)
    assert _snapshot(tmp_path) == before, "a failed save created or changed files"


def test_save_when_data_path_is_blocked_keeps_existing_output(tmp_path):
    target = tmp_path / "net.onnx"
    target.write_bytes(b"previous model")
    (tmp_path / _data_name(target)).mkdir()  # the data file cannot be written
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError):
        homec.save(homec.load(_bigger_model()), target, external_data=True)
    assert _snapshot(tmp_path) == before


_FSIZE_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    import onnx
    import homec
    from homec.errors import HomecError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a too-large write fails with EFBIG
    model = onnx.load(sys.argv[1])
    graph = homec.load(model)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        homec.save(graph, sys.argv[2], external_data=sys.argv[3] == "1")
    except HomecError as e:
        print(type(e).__name__, int(e.exit_code))
        print(str(e), file=sys.stderr)
    except BaseException as e:
        print("UNEXPECTED", type(e).__name__, e)
    else:
        print("NO ERROR")
""")


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("external_data", [False, True])
def test_save_failing_mid_write_leaves_no_partial_file(tmp_path, external_data):
    """Writing fails part way (file size limit): the old output survives, nothing partial."""
    src = tmp_path / "src" / "bigger.onnx"
    src.parent.mkdir()
    src.write_bytes(_bigger_model().SerializeToString())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "net.onnx"
    target.write_bytes(b"previous model")
    if external_data:
        (out_dir / _data_name(target)).write_bytes(b"previous data")
    before = _snapshot(tmp_path)
    script = tmp_path / "src" / "fsize.py"
    script.write_text(_FSIZE_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(src), str(target), "1" if external_data else "0"],
                       capture_output=True, text=True, timeout=300, cwd=out_dir)
    assert r.stdout.split()[:2] == ["OutputError", "7"], (r.stdout, r.stderr)
    assert "\n" not in r.stderr.strip()
    script.unlink()
    assert _snapshot(tmp_path) == {k: v for k, v in before.items() if k != "src/fsize.py"}, (
        "a failed save changed the existing output or left a partial/temporary file")


# ---------------------------------------------------------------------------------------
# CLI: `python -m homec inspect BAD.onnx`
# ---------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    bad = {}
    bad["missing"] = tmp_path / "missing.onnx"
    (tmp_path / "empty.onnx").write_bytes(b"")
    bad["empty"] = tmp_path / "empty.onnx"
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(1000))
    bad["random"] = tmp_path / "random.onnx"
    (tmp_path / "adir.onnx").mkdir()
    bad["directory"] = tmp_path / "adir.onnx"
    nodes = [helper.make_node("Add", ["X", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    bad["cycle"] = _write(tmp_path / "cycle.onnx", _model(nodes, [_f32("X", [2])], [_f32("b", [2])]))
    bad["undefined"] = _write(tmp_path / "undef.onnx", _model(
        [helper.make_node("Add", ["X", "ghost"], ["Y"])], [_f32("X", [2])], [_f32("Y", [2])]))
    bad["abs_external"] = _write(tmp_path / "ext" / "abs.onnx", _ext_model("/etc/passwd", 0, 24))
    bad["truncated"] = tmp_path / "trunc.onnx"
    data = _valid_model().SerializeToString()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    with open(tmp_path / "huge.onnx", "wb") as f:
        f.truncate(2**31 + 10)
    bad["huge"] = tmp_path / "huge.onnx"
    bad["subgraph_cycle"] = _write(tmp_path / "subcycle.onnx", _if_model(
        [helper.make_node("Relu", ["sb"], ["sa"]), helper.make_node("Neg", ["sa"], ["sb"])],
        [_f32("sb", [2])]))
    (tmp_path / "nul").mkdir()
    (tmp_path / "nul" / "w").write_bytes(W_VALUES.tobytes())
    bad["nul_location"] = _write(tmp_path / "nul" / "model.onnx", _ext_model("w\x00.bin", 0, 24))
    t = numpy_helper.from_array(W_VALUES, "W")
    t.raw_data = t.raw_data[:20]
    bad["inline_size_mismatch"] = _write(tmp_path / "badinline.onnx", _model(
        [helper.make_node("Add", ["X", "W"], ["Y"])], [_f32("X", [2, 3])], [_f32("Y", [2, 3])], [t]))
    return bad


CLI_CASES = ["missing", "empty", "random", "directory", "cycle", "undefined", "abs_external",
             "truncated", "huge", "subgraph_cycle", "nul_location", "inline_size_mismatch"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_inspect_bad_model_exits_3(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    before = _snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "homec", "inspect", str(path)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {r.stderr!r}"
    assert str(path) in lines[0] or os.path.realpath(path) in lines[0], lines[0]
    assert _snapshot(tmp_path) == before
