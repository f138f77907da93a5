"""fold_batchnorm: BN folded into Conv / ConvTranspose / Gemm; every refusal by reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

TP = onnx.TensorProto
F32 = TP.FLOAT
RNG = np.random.default_rng(7)


def _bn_inits(c, prefix="bn"):
    return [h_init(f"{prefix}_s", RNG.uniform(0.5, 1.5, c)), h_init(f"{prefix}_b", RNG.normal(size=c)),
            h_init(f"{prefix}_m", RNG.normal(size=c)), h_init(f"{prefix}_v", RNG.uniform(0.5, 2.0, c))]


def h_init(name, arr, dtype=np.float32):
    return onnx.numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def _bn(inp, out, prefix="bn", **attrs):
    return onnx.helper.make_node("BatchNormalization", [inp, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                                 [out], **attrs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_bn(h, bias, group):
    cin, cout = 4, 6
    inits = [h_init("w", RNG.normal(size=(cout, cin // group, 3, 3)))] + _bn_inits(cout)
    ins = ["x", "w"]
    if bias:
        inits.append(h_init("b", RNG.normal(size=cout)))
        ins.append("b")
    m = h.model([h.node("Conv", ins, ["c"], group=group, pads=[1, 1, 1, 1]), _bn("c", "bnout", epsilon=1e-3),
                 h.node("Relu", ["bnout"], ["y"])],
                [("x", F32, [2, cin, 5, 5])], [("y", F32, [2, cout, 5, 5])], inits)
    r = h.check(m, "fold_batchnorm", {"folded": 1})
    assert r.ops() == ["Conv", "Relu"]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_uses_the_cin_cout_layout(h, group):
    cin, cout_g = 4, 3  # weight [Cin, Cout/group, kh, kw]; Cout = 3 * group
    cout = cout_g * group
    inits = [h_init("w", RNG.normal(size=(cin, cout_g, 2, 2))), h_init("b", RNG.normal(size=cout))] + _bn_inits(cout)
    m = h.model([h.node("ConvTranspose", ["x", "w", "b"], ["c"], group=group, strides=[2, 2]), _bn("c", "y")],
                [("x", F32, [1, cin, 3, 3])], [("y", F32, [1, cout, 6, 6])], inits)
    r = h.check(m, "fold_batchnorm", {"folded": 1})
    assert r.ops() == ["ConvTranspose"]
    assert [o.name for o in r.model.graph.output] == ["y"]  # the BN output name survives


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 5), (3, 1), ()])
def test_gemm_bn(h, trans_b, c_shape):
    k, n = 4, 5
    b = RNG.normal(size=(n, k) if trans_b else (k, n))
    inits = [h_init("B", b)] + _bn_inits(n)
    ins = ["a", "B"]
    if c_shape is not None:
        inits.append(h_init("C", RNG.normal(size=c_shape)))
        ins.append("C")
    m = h.model([h.node("Gemm", ins, ["g"], transB=trans_b, alpha=0.7, beta=1.3), _bn("g", "bo"),
                 h.node("Relu", ["bo"], ["y"])],
                [("a", F32, [3, k])], [("y", F32, [3, n])], inits)
    r = h.check(m, "fold_batchnorm", {"folded": 1})
    assert r.ops() == ["Gemm", "Relu"]


def test_bn_after_activation_is_not_folded_across_it(h):
    """Regression: folding BN into a Conv across the Relu between them changes the result."""
    inits = [h_init("w", RNG.normal(size=(3, 3, 1, 1)))] + _bn_inits(3)
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), h.node("Relu", ["c"], ["r"]), _bn("r", "y")],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 3, 4, 4])], inits)
    r = h.check_noop(m, "fold_batchnorm", expected={"refused_not_after_linear": 1})
    assert r.ops() == ["Conv", "Relu", "BatchNormalization"]


def test_shared_weight_is_refused(h):
    inits = [h_init("w", RNG.normal(size=(3, 3, 1, 1)))] + _bn_inits(3, "p") + _bn_inits(3, "q")
    m = h.model([h.node("Conv", ["x", "w"], ["c1"]), _bn("c1", "y1", "p"),
                 h.node("Conv", ["x", "w"], ["c2"]), _bn("c2", "y2", "q")],
                [("x", F32, [1, 3, 4, 4])], [("y1", F32, [1, 3, 4, 4]), ("y2", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm", expected={"refused_shared_weight": 2})


def test_conv_output_with_other_users_is_refused(h):
    inits = [h_init("w", RNG.normal(size=(3, 3, 1, 1)))] + _bn_inits(3)
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), _bn("c", "b"), h.node("Add", ["b", "c"], ["y"])],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm", expected={"refused_other_users": 1})
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), _bn("c", "y")],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 3, 4, 4]), ("c", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm", expected={"refused_other_users": 1})


def test_non_constant_parameters_are_refused(h):
    inits = [h_init("w", RNG.normal(size=(3, 3, 1, 1)))] + _bn_inits(3)[:3]
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), _bn("c", "y")],
                [("x", F32, [1, 3, 4, 4]), ("bn_v", F32, [3])], [("y", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm", expected={"refused_non_constant": 1})
    inits = _bn_inits(3)
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), _bn("c", "y")],
                [("x", F32, [1, 3, 4, 4]), ("w", F32, [3, 3, 1, 1])], [("y", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm", expected={"refused_non_constant": 1})


def test_training_mode_is_refused(h):
    inits = [h_init("w", RNG.normal(size=(3, 3, 1, 1)))] + _bn_inits(3)
    bn = _bn("c", "y", training_mode=1)
    bn.output.extend(["rm", "rv"])
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), bn],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm", expected={"refused_training": 1})


def test_decompose_standalone(h):
    m = h.model([h.node("Relu", ["x"], ["r"]), _bn("r", "y")],
                [("x", F32, [2, 3, 4, 4])], [("y", F32, [2, 3, 4, 4])], _bn_inits(3))
    r = h.check(m, "fold_batchnorm", {"decomposed": 1}, decompose_standalone=True)
    assert r.ops() == ["Relu", "Mul", "Add"]
    assert [o.name for o in r.model.graph.output] == ["y"]


def test_per_channel_mul_and_add_after_conv_fold(h):
    inits = [h_init("w", RNG.normal(size=(3, 2, 3, 3))), h_init("k", RNG.normal(size=(3, 1, 1))),
             h_init("t", np.array(0.25)), h_init("t2", RNG.normal(size=(1, 3, 1, 1)))] + _bn_inits(3)
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), h.node("Mul", ["k", "c"], ["m"]), h.node("Add", ["m", "t"], ["a"]),
                 _bn("a", "b"), h.node("Add", ["b", "t2"], ["y"])],
                [("x", F32, [1, 2, 5, 5])], [("y", F32, [1, 3, 3, 3])], inits)
    r = h.check(m, "fold_batchnorm", {"folded": 1, "folded_affine": 3})
    assert r.ops() == ["Conv"] and [o.name for o in r.model.graph.output] == ["y"]
    h.check_noop(m, "fold_batchnorm", fold_affine=False, expected={"refused_not_after_linear": 1})


def test_gemm_bias_add_folds_into_c(h):
    m = h.model([h.node("Gemm", ["a", "B"], ["g"], transB=1), h.node("Add", ["g", "c"], ["y"])],
                [("a", F32, [2, 4])], [("y", F32, [2, 5])],
                [h_init("B", RNG.normal(size=(5, 4))), h_init("c", RNG.normal(size=5))])
    r = h.check(m, "fold_batchnorm", {"folded_affine": 1})
    assert r.ops() == ["Gemm"]


def test_mul_that_is_not_per_channel_stays(h):
    inits = [h_init("w", RNG.normal(size=(3, 2, 1, 1))), h_init("k", RNG.normal(size=(4,))),
             h_init("k2", RNG.normal(size=(1, 3, 4, 4)))]
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), h.node("Mul", ["c", "k"], ["m"]),
                 h.node("Conv", ["x", "w2"], ["c2"]), h.node("Mul", ["c2", "k2"], ["m2"]),
                 h.node("Add", ["m", "m2"], ["y"])],
                [("x", F32, [1, 2, 4, 4])], [("y", F32, [1, 3, 4, 4])],
                inits + [h_init("w2", RNG.normal(size=(3, 2, 1, 1)))])
    h.check_noop(m, "fold_batchnorm")


def test_nothing_to_fold_is_byte_identical(h):
    inits = [h_init("w", RNG.normal(size=(3, 3, 1, 1)))]
    m = h.model([h.node("Conv", ["x", "w"], ["c"]), h.node("Relu", ["c"], ["y"])],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 3, 4, 4])], inits)
    h.check_noop(m, "fold_batchnorm")
