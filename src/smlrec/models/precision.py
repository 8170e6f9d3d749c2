"""Reduced-precision arithmetic for the dense networks (the SML transfer): bf16 autocast.

``bf16`` runs matrix products and activations in bfloat16 (8 bits of mantissa) and keeps the
parameters, their gradients and Adam's moments in float32, as mixed-precision training does. It is
worth it only where the hardware multiplies bf16 natively: CUDA GPUs, and CPUs with AVX512-BF16 or
AMX (on others oneDNN emulates bf16, which is slower than float32), so elsewhere the setting falls
back to float32 with one warning.
"""

from __future__ import annotations

import contextlib
import warnings
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's own test)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_warned = False


def effective_precision(precision: str, device: torch.device | str) -> str:
    """``precision``, or ``fp32`` (with one warning) where bf16 would only be emulated."""
    global _warned
    if precision != "bf16" or torch.device(device).type == "cuda" or cpu_has_bf16():
        return precision
    if not _warned:
        warnings.warn("precision bf16: this CPU has no native bf16 instructions (AVX512-BF16 or AMX), "
                      "so the transfer runs in fp32", RuntimeWarning, stacklevel=2)
        _warned = True
    return "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context the dense network runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
