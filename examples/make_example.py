#!/usr/bin/env python3
"""Build examples/kws_cnn.onnx: a tiny keyword-spotting CNN (deterministic, seeded).

The model listens for 12 voice commands on an appliance (washing machine, smart speaker):

    mfcc  float32 [1, 1, 49, 10]   49 frames x 10 MFCC coefficients
      Conv 3x3 /2 (1 -> 16) + BatchNormalization + Relu
      depthwise-separable block: Conv 3x3 depthwise (16 groups) + BN + Relu,
                                 Conv 1x1 pointwise (16 -> 32) + BN + Relu
      residual block: Conv 3x3 + BN + Relu, Conv 3x3 + BN, Add(skip), Relu
      GlobalAveragePool, Flatten, Gemm (32 -> 12), Softmax
    probs float32 [1, 12]

It also carries what a real exported model often carries and a cleanup pass removes:
an Identity, an inference-mode Dropout, and a Reshape whose target shape is computed from
Constant nodes (Concat of two Constants) and changes nothing.

Usage:  python examples/make_example.py [OUT]   (default: kws_cnn.onnx beside this script)

The bytes are reproducible: weights come from numpy's legacy RandomState, whose stream is
frozen across numpy versions, and nothing time- or host-dependent goes into the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
OPSET = 17
IR_VERSION = 8
LABELS = ["silence", "unknown", "start", "stop", "pause", "resume",
          "hot", "cold", "spin", "rinse", "drain", "cancel"]


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def conv_bn(self, x: str, name: str, cin: int, cout: int, k: int, *, stride=(1, 1),
                group: int = 1, relu: bool = True) -> str:
        fan_in = (cin // group) * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(cout) * 0.05
        pad = k // 2
        y = self.node("Conv", [x, self.init(f"{name}.weight", w.astype(np.float32)),
                               self.init(f"{name}.bias", b.astype(np.float32))],
                      [f"{name}.conv"], f"{name}/Conv", kernel_shape=[k, k],
                      pads=[pad, pad, pad, pad], strides=list(stride), group=group)
        scale = 1.0 + 0.1 * self.rng.standard_normal(cout)
        shift = 0.1 * self.rng.standard_normal(cout)
        mean = 0.1 * self.rng.standard_normal(cout)
        var = 1.0 + 0.2 * np.abs(self.rng.standard_normal(cout))
        y = self.node("BatchNormalization",
                      [y, self.init(f"{name}.bn.scale", scale.astype(np.float32)),
                       self.init(f"{name}.bn.bias", shift.astype(np.float32)),
                       self.init(f"{name}.bn.mean", mean.astype(np.float32)),
                       self.init(f"{name}.bn.var", var.astype(np.float32))],
                      [f"{name}.bn"], f"{name}/BatchNormalization", epsilon=1e-5)
        if relu:
            y = self.node("Relu", [y], [f"{name}.relu"], f"{name}/Relu")
        return y


def build_model() -> onnx.ModelProto:
    b = _Builder(SEED)
    x = "mfcc"
    # Stem: halve time and frequency resolution.
    y = b.conv_bn(x, "stem", 1, 16, 3, stride=(2, 2))                 # [1,16,25,5]
    # Depthwise-separable block.
    y = b.conv_bn(y, "ds1.dw", 16, 16, 3, group=16)                    # [1,16,25,5]
    y = b.conv_bn(y, "ds1.pw", 16, 32, 1)                              # [1,32,25,5]
    # An exporter leftover: an Identity between two blocks.
    y = b.node("Identity", [y], ["ds1.out"], "ds1/Identity")
    # Residual block.
    skip = y
    y = b.conv_bn(y, "res1.a", 32, 32, 3)
    y = b.conv_bn(y, "res1.b", 32, 32, 3, relu=False)
    y = b.node("Add", [y, skip], ["res1.add"], "res1/Add")
    y = b.node("Relu", [y], ["res1.relu"], "res1/Relu")                # [1,32,25,5]
    # Head.
    y = b.node("GlobalAveragePool", [y], ["head.pool"], "head/GlobalAveragePool")  # [1,32,1,1]
    y = b.node("Flatten", [y], ["head.flat"], "head/Flatten", axis=1)             # [1,32]
    # Dropout in inference mode (no training_mode input): an identity at run time.
    y = b.node("Dropout", [y], ["head.drop"], "head/Dropout")
    w = b.rng.standard_normal((len(LABELS), 32)) * np.sqrt(1.0 / 32)
    bias = b.rng.standard_normal(len(LABELS)) * 0.05
    y = b.node("Gemm", [y, b.init("head.fc.weight", w.astype(np.float32)),
                        b.init("head.fc.bias", bias.astype(np.float32))],
               ["head.logits"], "head/Gemm", transB=1)                  # [1,12]
    # A target shape computed from Constants, feeding a Reshape that changes nothing.
    batch = b.node("Constant", [], ["head.shape.batch"], "head/shape/Constant_batch",
                   value=numpy_helper.from_array(np.array([1], dtype=np.int64), "batch"))
    classes = b.node("Constant", [], ["head.shape.classes"], "head/shape/Constant_classes",
                     value=numpy_helper.from_array(np.array([-1], dtype=np.int64), "classes"))
    shape = b.node("Concat", [batch, classes], ["head.shape"], "head/shape/Concat", axis=0)
    y = b.node("Reshape", [y, shape], ["head.logits2d"], "head/Reshape")
    b.node("Softmax", [y], ["probs"], "head/Softmax", axis=-1)

    graph = helper.make_graph(
        b.nodes, "kws_cnn",
        [helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, [1, 1, 49, 10])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, len(LABELS)])],
        initializer=b.inits,
        doc_string="Keyword spotting for appliance voice commands (untrained, seeded weights).",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="homec-examples",
        producer_version="1",
        doc_string="homec example: tiny keyword-spotting CNN (examples/make_example.py).",
    )
    helper.set_model_props(model, {"labels": ",".join(LABELS)})
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).with_name("kws_cnn.onnx")
    data = build_model().SerializeToString(deterministic=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
