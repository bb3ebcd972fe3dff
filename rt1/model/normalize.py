"""Image scaling: uint8 RGB -> the model's float input, as `RT1Config.pixel_scaling` says.

    "imagenet": x = (pixel / 255 - mean) / std,  mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225)
    "raw":      x = float(pixel), 0..255 (what the original pipeline fed its model: the `original` preset)

The channel axis is dim 1, so the same function takes a video (B, 3, F, H, W) and a batch of
frames (N, 3, H, W); the memory layout of the input is kept. The model calls it itself with its own
`config.pixel_scaling` (RT1.encode_frames): callers pass uint8 pixels, which are 4x smaller to move to the device.
`scaling` is one of `PIXEL_SCALINGS`, checked once by RT1Config.
"""

from __future__ import annotations

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_video(video: Tensor, scaling: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, 3, F, H, W) or (N, 3, H, W) -> float of the same shape, scaled per `scaling`."""
    if video.ndim < 3 or video.shape[1] != 3:
        raise ValueError(f"expected the channel axis (3) at dim 1, got shape {tuple(video.shape)}")
    if video.is_floating_point():
        raise TypeError(f"normalize_video expects uint8 pixels, got {video.dtype} (already normalised?)")
    if scaling == "raw":
        return video.to(dtype)
    shape = (1, 3) + (1,) * (video.ndim - 2)
    mean = torch.tensor(IMAGENET_MEAN, device=video.device, dtype=dtype).view(shape)
    std = torch.tensor(IMAGENET_STD, device=video.device, dtype=dtype).view(shape)
    return (video.to(dtype) / 255.0 - mean) / std
