"""A generated sequential CNN with a cheap, data-reducing head and a compute-heavy tail (the
shape split computing exploits): 3x64x64 -> 16x32x32 -> 16x16x16 -> 32x8x8 -> 3 x 128x8x8
convolutions -> 128x4x4 -> 10."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_cnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"

    def conv(name: str, cin: int, cout: int, stride: int) -> None:
        nonlocal x
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        x = f"{name}_r"

    def pool(name: str) -> None:
        nonlocal x
        nodes.append(helper.make_node("MaxPool", [x], [name], kernel_shape=[2, 2], strides=[2, 2]))
        x = name

    conv("c1", 3, 16, 2)
    pool("p1")
    conv("c2", 16, 32, 2)
    conv("c3", 32, 128, 1)
    conv("c4", 128, 128, 1)
    conv("c5", 128, 128, 1)
    pool("p2")
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    w = (rng.standard_normal((2048, 10)) * 0.02).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "fc_w"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc_w"], ["logits"]))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, 64, 64])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model
