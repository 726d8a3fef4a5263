"""Camera image encodings to network-ready RGB, with errors that name the problem."""

from typing import Dict, Tuple

import cv2
import numpy as np


class ImageError(ValueError):
    """An image that cannot be segmented: bad encoding, shape or size."""


#: encoding -> (channels, OpenCV conversion to RGB or None). Names follow sensor_msgs.
ENCODINGS: Dict[str, Tuple[int, int]] = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    # ROS's 'yuv422' is UYVY byte order; 'yuv422_yuy2' (alias 'yuyv') is YUYV.
    'yuv422': (2, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, cv2.COLOR_YUV2RGB_YUYV),
    'yuyv': (2, cv2.COLOR_YUV2RGB_YUYV),
}


def channels_of(encoding: str) -> int:
    """Return the number of interleaved channels of ``encoding``.

    :raises ImageError: for an unsupported encoding, listing the supported ones.
    """
    try:
        return ENCODINGS[encoding][0]
    except KeyError:
        raise ImageError(f'unsupported encoding {encoding!r}; supported: '
                         f'{", ".join(ENCODINGS)}') from None


def to_rgb(image: np.ndarray, encoding: str = 'rgb8') -> np.ndarray:
    """Convert an ``HxW[xC]`` uint8 image in ``encoding`` to contiguous ``HxWx3`` RGB.

    :param image: pixel array; mono8 may be ``HxW``, YUV 4:2:2 is ``HxWx2``.
    :param encoding: a sensor_msgs encoding name (see :data:`ENCODINGS`).
    :rtype: numpy.ndarray
    :raises ImageError: for an unsupported encoding, a wrong dtype or shape, or zero size.
    """
    channels = channels_of(encoding)
    if not isinstance(image, np.ndarray):
        raise ImageError(f'expected a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ImageError(f'{encoding} images must be uint8, got {image.dtype}')
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise ImageError(f'{encoding} expects shape HxWx{channels}, got {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f'image has zero size {image.shape[1]}x{image.shape[0]}')
    if channels == 2 and image.shape[1] % 2:
        raise ImageError(f'{encoding} needs an even width, got {image.shape[1]}')
    code = ENCODINGS[encoding][1]
    if code is None:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), code)
