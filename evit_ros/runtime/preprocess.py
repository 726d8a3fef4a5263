"""Pre- and post-processing exactly as the EfficientViT release evaluates.

Pre: RGB uint8 resized to the network size with bicubic interpolation (OpenCV
``INTER_CUBIC``, as the release's evaluation transform), scaled to [0, 1] and normalised
with the ImageNet mean and std. Post: logits resized to the output size (bicubic,
``align_corners=False``), then argmax.
"""

from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_SCALE = 1.0 / (255.0 * STD)
_OFFSET = MEAN / STD


def preprocess(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Return the ``1x3xHxW`` float32 network input for an ``HxWx3`` uint8 RGB image.

    :param rgb: image as produced by :func:`evit_ros.runtime.image.to_rgb`.
    :param size: network ``(height, width)``.
    """
    height, width = size
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    # (x / 255 - mean) / std as one multiply-add per pixel, written plane by plane
    # straight into the NCHW result (a third of the time of convert-then-transpose).
    out = np.empty((1, 3, height, width), np.float32)
    for channel in range(3):
        plane = out[0, channel]
        np.multiply(rgb[:, :, channel], _SCALE[channel], out=plane, casting='unsafe')
        plane -= _OFFSET[channel]
    return out


def labels_from_logits(logits: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """Resize ``1xCxhxw`` logits to ``size`` (bicubic) and return the uint8/uint16 argmax.

    :param logits: network output; numpy arrays are accepted too.
    :param size: output ``(height, width)``.
    """
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode='bicubic', align_corners=False)
    labels = logits.argmax(dim=1)[0]
    dtype = torch.uint8 if logits.shape[1] <= 256 else torch.int32
    out = labels.to(dtype).cpu().numpy()
    return out if dtype == torch.uint8 else out.astype(np.uint16)
