"""What a measurement ran on, as benchmarks record it: looked up, never written by hand."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """e.g. "2-core CPU (x86_64), no GPU" or "2-core CPU (x86_64), NVIDIA H200"."""
    cpus = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    try:
        import torch

        if torch.cuda.is_available():
            return f"{cpus}, {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return f"{cpus}, no GPU"
