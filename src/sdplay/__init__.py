"""sdplay: a text-to-image studio for Stable Diffusion v1-4, 2.1 and SDXL on CUDA, XPU, MPS or CPU.

The core stands alone: nothing here imports the CLI, the server or the UIs, and nothing runs at import.
"""

from sdplay.errors import (
    Cancelled,
    DeviceNotAvailable,
    DeviceOutOfMemory,
    InvalidRequest,
    ModelNotAvailable,
    SdplayError,
)
from sdplay.types import GenerationRequest, GenerationResult, ModelInfo, PhaseTimings, StepInfo

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "DeviceNotAvailable",
    "DeviceOutOfMemory",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequest",
    "ModelInfo",
    "ModelNotAvailable",
    "PhaseTimings",
    "SdplayError",
    "StepInfo",
    "__version__",
]
