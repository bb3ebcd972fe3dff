"""Image scaling: uint8 RGB -> the model's float input, as `RT1Config.pixel_scaling` says.

    "imagenet": x = (pixel / 255 - mean) / std,  mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225)
    "raw":      x = float(pixel), 0..255 (what the original pipeline fed its model: the `original` preset)

Frames are channels-last everywhere, as stored and as the camera gives them: the channel axis is the
last one, so the same function takes a window batch (B, F, H, W, 3) and frames (N, H, W, 3); the output
has the input's shape and memory layout. The model calls it itself with its own `config.pixel_scaling`
(RT1.encode_frames): callers pass uint8 pixels, which are 4x smaller to move to the device.
`scaling` is one of `PIXEL_SCALINGS`, checked once by RT1Config.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rt1.model_config import IMAGENET_MEAN, IMAGENET_STD


def normalize_frames(frames: Tensor, scaling: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (..., H, W, 3) -> float of the same shape, scaled per `scaling`."""
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected channels-last frames (..., H, W, 3), got shape {tuple(frames.shape)}")
    if frames.is_floating_point():
        raise TypeError(f"normalize_frames expects uint8 pixels, got {frames.dtype} (already normalised?)")
    if scaling == "raw":
        return frames.to(dtype)
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device, dtype=dtype)
    std = torch.tensor(IMAGENET_STD, device=frames.device, dtype=dtype)
    return (frames.to(dtype) / 255.0 - mean) / std
