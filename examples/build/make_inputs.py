#!/usr/bin/env python3
"""Write the inputs of the build example (deterministic, seeded): a second model that keeps
its weights in external data, and calibration samples for the int8 builds.

    models/sensor_mlp.onnx (+ models/sensor_mlp.onnx.data)
        features float32 [1, 32]  (a window of vibration features of a fridge compressor)
          Gemm 32 -> 64 + Relu, Gemm 64 -> 4, Softmax
        state    float32 [1, 4]   (off, idle, running, fault)
    calib/kws_cnn.npz        8 samples of `mfcc` stacked on a leading axis
    calib/sensor_mlp/        a folder of .npz files, one sample of `features` each

Usage:  python examples/build/make_inputs.py [FOLDER]   (default: beside this script)

The model's bytes are reproducible (numpy's legacy RandomState, homec's deterministic
writer); the .npz files hold reproducible arrays in a zip whose timestamps vary.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from homec.onnx_io import save

SEED = 20240607
FEATURES, HIDDEN, STATES = 32, 64, 4


def sensor_mlp() -> onnx.ModelProto:
    rng = np.random.RandomState(SEED)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        scale = np.sqrt(2.0 / shape[0])
        return numpy_helper.from_array((rng.randn(*shape) * scale).astype(np.float32), name)

    inits = [
        weight("fc1.weight", FEATURES, HIDDEN),
        numpy_helper.from_array((rng.randn(HIDDEN) * 0.1).astype(np.float32), "fc1.bias"),
        weight("fc2.weight", HIDDEN, STATES),
        numpy_helper.from_array((rng.randn(STATES) * 0.1).astype(np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["features", "fc1.weight", "fc1.bias"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("Gemm", ["h_relu", "fc2.weight", "fc2.bias"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["state"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "sensor_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, STATES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="homec-examples")
    model.ir_version = 8
    return model


def write_inputs(folder: Path) -> None:
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "calib" / "sensor_mlp").mkdir(parents=True, exist_ok=True)
    # Weights of 1 KiB or more go to models/sensor_mlp.onnx.data.
    save(sensor_mlp(), folder / "models" / "sensor_mlp.onnx", external_data=True)
    rng = np.random.RandomState(SEED + 1)
    np.savez(folder / "calib" / "kws_cnn.npz",
             mfcc=rng.randn(8, 1, 1, 49, 10).astype(np.float32))
    for i in range(4):
        np.savez(folder / "calib" / "sensor_mlp" / f"sample_{i:03d}.npz",
                 features=rng.randn(1, FEATURES).astype(np.float32))


if __name__ == "__main__":
    write_inputs(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
