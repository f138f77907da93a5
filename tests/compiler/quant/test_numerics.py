"""numerics: the affine arithmetic of QuantizeLinear/DequantizeLinear, as onnxruntime does it."""

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from homec.quant import numerics as N
from homec.verify import make_session


def _ort_quantize(x, scale, zp, axis=None):
    attrs = {} if axis is None else {"axis": axis}
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(zp).dtype)
    g = oh.make_graph([oh.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)], "g",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
                      [oh.make_tensor_value_info("y", elem, list(x.shape))],
                      [onh.from_array(np.asarray(scale, np.float32), "s"), onh.from_array(np.asarray(zp), "z")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    m.ir_version = 8
    return make_session(m).run(None, {"x": x})[0]


@pytest.mark.parametrize("qt", ["int8", "uint8"])
def test_quantize_matches_onnxruntime_including_ties_and_saturation(qt):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(scale=3, size=500), np.arange(-300, 300) * 0.25]).astype(np.float32)
    s, z = N.choose_qparams(x.min(), x.max() / 2, N.qtype(qt), symmetric=qt == "int8")
    np.testing.assert_array_equal(N.quantize(x, s, z, N.qtype(qt)), _ort_quantize(x, s, z))


def test_per_axis_quantize_matches_onnxruntime():
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(4, 6)) * np.array([[0.01], [1], [10], [100]])).astype(np.float32)
    s, z = N.weight_qparams(w, N.qtype("int8"), axis=0)
    np.testing.assert_array_equal(N.quantize(w, s, z, N.qtype("int8"), 0), _ort_quantize(w, s, z, 0))
    assert np.abs(N.dequantize(N.quantize(w, s, z, N.qtype("int8"), 0), s, z, 0) - w).max(axis=1).tolist() \
        <= (s / 2 * 1.0001).tolist()


def test_symmetric_int8_grid_is_restricted_and_exact_at_the_ends():
    s, z = N.choose_qparams(-2.0, 1.0, N.qtype("int8"), symmetric=True)
    assert int(z) == 0 and np.isclose(s, 2.0 / 127)
    q = N.quantize(np.array([-2.0, 2.0], np.float32), s, z, N.qtype("int8"))
    assert q.tolist() == [-127, 127]


def test_range_always_contains_zero_and_tiny_ranges_are_empty():
    s, z = N.choose_qparams(2.0, 5.0, N.qtype("uint8"), symmetric=False)
    assert int(z) == 0 and np.isclose(s, 5.0 / 255)  # widened to [0, 5]
    s, z = N.choose_qparams(-1e-36, 1e-36, N.qtype("int8"), symmetric=True)
    assert float(s) == 1.0  # a denormal step would overflow x / s and underflow bias scales
    s, _ = N.choose_qparams(np.array([0.0, -1.0]), np.array([0.0, 1.0]), N.qtype("int8"), symmetric=True)
    assert s.tolist()[0] == 1.0


def test_bias_scale_is_the_float32_product():
    qb, sb = N.quantize_bias(np.array([1.0, -2.0, 0.5], np.float32), np.float32(0.1),
                             np.array([0.01, 0.02, 0.03], np.float32))
    np.testing.assert_array_equal(sb, (np.float32(0.1) * np.array([0.01, 0.02, 0.03], np.float32)))
    assert qb.dtype == np.int32 and qb.tolist() == [1000, -1000, 167]
