"""homec: a graph-rewriting ONNX model compiler for home-appliance targets.

Public API:
    homec.load(path_or_model) -> Graph
    homec.save(graph_or_model, path, *, external_data=None)
    Graph.to_onnx() -> onnx.ModelProto
    homec.compile(model, schedule, *, target=None, calib=None, verify=False) -> CompileResult
"""

from homec.errors import ExitCode, HomecError
from homec.ir import Attr, AttrType, Dim, Graph, Node, Tensor, TensorType, Value
from homec.onnx_io import load, save
from homec.driver import CompileResult, compile  # noqa: A004 — homec.compile is the public name

__version__ = "0.1.0"

__all__ = [
    "Attr", "AttrType", "CompileResult", "compile", "Dim", "ExitCode", "Graph", "HomecError", "Node", "Tensor", "TensorType",
    "Value", "load", "save", "__version__",
]
