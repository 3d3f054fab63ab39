"""ONNX Runtime int8 as a benchmark candidate: the int8 CPU path a user outside torch would pick.

onnx and onnxruntime are optional (``pip install 'fgq-pipeline[bench]'``), so they are imported
where they are used: a missing package raises ImportError there, which the workload records as its
reason for skipping the candidate.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

INSTALL_HINT = "pip install 'fgq-pipeline[bench]'"
# Operators of a quantized graph: a model with none of them would time float kernels under an int8 name
INT8_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"})


class OrtCandidate:
    """Runs an int8 ONNX model on one float32 input, float32 out. A session fixes its thread count
    when it is made, so the bench calls ``set_threads`` before timing at each count."""

    def __init__(self, model: bytes, x: np.ndarray):
        self.model, self.x = model, x
        self.sessions: dict[int, object] = {}
        self.set_threads(1)

    def set_threads(self, threads: int) -> None:
        """Makes (once per count, outside the timed calls) and selects the session for ``threads``."""
        if threads not in self.sessions:
            self.sessions[threads] = _session(self.model, threads)
        self.session = self.sessions[threads]

    def __call__(self) -> np.ndarray:
        return self.session.run(None, {"x": self.x})[0]


def static_int8(module: nn.Module, x: torch.Tensor, calibration: list[torch.Tensor]) -> OrtCandidate:
    """Static quantization: int8 per-channel weights, uint8 activations whose ranges (min-max)
    come from ``calibration``, the images the other candidates of the workload calibrate on."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as directory, _quiet():
        fp32, int8 = _export(module, x, Path(directory)), Path(directory) / "int8.onnx"
        quantize_static(fp32, int8, _Calibration(calibration), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return OrtCandidate(_int8_model(int8), x.numpy())


def dynamic_int8(module: nn.Module, x: torch.Tensor) -> OrtCandidate:
    """Dynamic quantization (int8 weights, activations quantized in each call): what a user picks
    for a fully connected layer at batch 1, as torch's dynamic int8 Linear."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as directory, _quiet():
        fp32, int8 = _export(module, x, Path(directory)), Path(directory) / "int8.onnx"
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        return OrtCandidate(_int8_model(int8), x.numpy())


@contextmanager
def _quiet() -> Iterator[None]:
    """Hides INFO records while exporting and quantizing: ONNX Runtime's quantizers log each step
    on the root logger, which the Hydra apps print, several lines per workload."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


class _Calibration:
    """A CalibrationDataReader (ONNX Runtime's reader protocol is one method, ``get_next``)."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = iter([{"x": batch.numpy()} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _export(module: nn.Module, x: torch.Tensor, directory: Path) -> Path:
    """The float module as ONNX with a dynamic batch, after ONNX Runtime's quantization
    pre-processing: its quantizers need that step (the exporter passes conv biases through
    Identity nodes, which quantize_static cannot quantize)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    exported, fp32 = directory / "exported.onnx", directory / "fp32.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), exported, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    quant_pre_process(exported, fp32)
    return fp32


def _int8_model(path: Path) -> bytes:
    """The quantized model's bytes, refused if ONNX Runtime left every layer in float."""
    import onnx

    model = onnx.load(path)
    if not INT8_OPS & {node.op_type for node in model.graph.node}:
        raise RuntimeError("ONNX Runtime quantized no layer of the model")
    return model.SerializeToString()


def _session(model: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads would spin for a while after each run, taking the cores from the candidate
    # timed next (at 2 threads that made other candidates up to 10x slower in interleaved rounds).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
