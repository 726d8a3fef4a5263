"""Per-pixel confidence: the winning class's softmax probability, as 0-255.

The softmax is taken over the network's logits (at 1/8 of the network size) and its
maximum resized bilinearly to the label map's size: a costmap layer reads it as "how sure
the label at this pixel is". Interpolating the probability instead of every class's logits
costs one plane instead of C.
"""

from typing import Tuple

import cv2
import numpy as np
import torch


def confidence_map(logits, size: Tuple[int, int]) -> np.ndarray:
    """Return ``uint8`` confidence (``round(255 * max softmax)``) of one image at ``size``.

    :param logits: ``1xCxhxw`` or ``Cxhxw`` logits (torch tensor or numpy array).
    :param size: output ``(height, width)``.
    """
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    logits = logits.detach().to('cpu', torch.float32)
    if logits.ndim == 4:
        logits = logits[0]
    top = torch.softmax(logits, dim=0).amax(dim=0).numpy()
    height, width = int(size[0]), int(size[1])
    if top.shape != (height, width):
        top = cv2.resize(top, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(top * 255.0), 0, 255).astype(np.uint8)
