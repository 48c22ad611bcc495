"""The latency backends users deploy on, and what each needs: eager PyTorch and ONNX Runtime on the CPU or a CUDA
GPU, and OpenVINO on the CPU.

==================== ================================================================ ===========================
backend              runs                                                             needs
==================== ================================================================ ===========================
``eager``            ``model(x)`` where the model's parameters are                    torch
``eager-cuda``       ``model(x)`` on ``cuda`` (the model is moved there and back)     a CUDA GPU
``onnxruntime``      the exported ONNX model, ``CPUExecutionProvider``                ``[onnx]`` extra
``onnxruntime-cuda`` the exported ONNX model, ``CUDAExecutionProvider``               ``onnxruntime-gpu``, a GPU
``openvino``         the exported ONNX model compiled by OpenVINO for ``CPU``         ``[onnx,openvino]`` extras
==================== ================================================================ ===========================

Example:
    >>> check_backend("eager")
    >>> is_cuda("onnxruntime-cuda"), is_cuda("openvino")
    (True, False)
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BACKENDS", "OPENVINO_EXTRA_HINT", "check_backend", "is_cuda", "openvino_core", "ort_providers",
           "require_backend"]

#: the latency backends every measuring function accepts.
BACKENDS = ("eager", "onnxruntime", "openvino", "eager-cuda", "onnxruntime-cuda")

OPENVINO_EXTRA_HINT = 'pip install "lightning-prune[onnx,openvino]"'


def check_backend(backend: str) -> None:
    """``ValueError`` naming the choices when ``backend`` is not one of :data:`BACKENDS`.

    Example:
        >>> check_backend("tensorrt")
        Traceback (most recent call last):
        ...
        ValueError: unknown latency backend 'tensorrt'; choose one of eager, onnxruntime, openvino, eager-cuda, \
onnxruntime-cuda
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def is_cuda(backend: str) -> bool:
    """Whether ``backend`` runs on a CUDA GPU."""
    return backend.endswith("-cuda")


def ort_providers(backend: str) -> list[str]:
    """ONNX Runtime execution providers for ``backend``; a one-line error when the CUDA provider is missing."""
    if backend != "onnxruntime-cuda":
        return ["CPUExecutionProvider"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise RuntimeError("the 'onnxruntime-cuda' backend needs onnxruntime-gpu and a CUDA GPU "
                           f"(available providers: {', '.join(onnxruntime.get_available_providers())})")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def openvino_core() -> Any:
    """``openvino.Core()``; a one-line ``ImportError`` naming the extra when OpenVINO is not installed."""
    try:
        import openvino
    except ImportError:
        raise ImportError(f"the 'openvino' latency backend needs OpenVINO: {OPENVINO_EXTRA_HINT}") from None
    return openvino.Core()


def require_backend(backend: str) -> None:
    """Fail now, with one line, when ``backend`` is unknown or cannot run on this machine.

    Example:
        >>> require_backend("eager")
    """
    check_backend(backend)
    if backend in ("onnxruntime", "onnxruntime-cuda", "openvino"):
        from lightning_prune.profiling.onnx_runtime import require_onnx

        require_onnx()
    if backend == "openvino":
        openvino_core()
    if is_cuda(backend) and not torch.cuda.is_available():
        raise RuntimeError(f"the {backend!r} latency backend needs a CUDA GPU; torch sees none")
    if backend == "onnxruntime-cuda":
        ort_providers(backend)
