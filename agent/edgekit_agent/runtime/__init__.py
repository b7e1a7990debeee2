"""Runtimes: backends (LiteRT / tflite-runtime, ONNX Runtime, TFLM, Edge TPU delegate) and the
float-speaking :class:`Runner`. ``runtime.loader.load_runner`` loads a bundle's variant."""

from .backends import BACKENDS, Backend, edgetpu_available, load_backend
from .runner import Runner, dequantize, dequantizer, quantize, quantizer

__all__ = ["BACKENDS", "Backend", "Runner", "dequantize", "dequantizer", "edgetpu_available",
           "load_backend", "quantize", "quantizer"]
