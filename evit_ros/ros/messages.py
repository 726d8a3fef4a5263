"""sensor_msgs images to numpy and back, validated; no cv_bridge needed.

Every check raises :class:`MessageError` whose text is one line saying what is wrong with the
message and what a publisher should send instead. Raw images are viewed without a copy;
compressed images are checked cheaply on arrival (:func:`check_compressed`) and decoded
later by the worker (:func:`compressed_to_array`).
"""

import array
from typing import Tuple

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.runtime import image as decoding
from evit_ros.runtime.image import ENCODINGS, ImageError

#: Largest compressed image the node decodes (pixels); see :mod:`evit_ros.runtime.image`.
MAX_DECODED_PIXELS = decoding.MAX_DECODED_PIXELS
#: Most pixels a compressed image may declare per byte of data.
MAX_PIXELS_PER_BYTE = decoding.MAX_PIXELS_PER_BYTE


class MessageError(ImageError):
    """A message that cannot be segmented; ``str()`` is the one-line reason."""


def image_to_array(msg: Image) -> Tuple[np.ndarray, str]:
    """Return an ``HxWxC`` uint8 view of a raw image's pixels and its encoding.

    Row padding (``step`` larger than ``width * channels``) is skipped without copying. The
    rules are :func:`evit_ros.runtime.image.decode_raw`'s, shared with bags and calibration.

    :param msg: a ``sensor_msgs/Image`` in one of :data:`evit_ros.runtime.image.ENCODINGS`.
    :rtype: tuple(numpy.ndarray, str)
    :raises MessageError: for zero size, an unsupported encoding, big-endian multi-byte
        data, an odd width in YUV 4:2:2, a step shorter than a row, or data that does not
        match ``step * height``.
    """
    try:
        return decoding.decode_raw(msg.data, msg.width, msg.height, msg.step, msg.encoding,
                                   bool(msg.is_bigendian), ENCODINGS)
    except ImageError as exc:
        raise MessageError(str(exc)) from None


def check_compressed(msg: CompressedImage) -> str:
    """Check a compressed image without decoding it and return ``'jpeg'`` or ``'png'``.

    :raises MessageError: as :func:`evit_ros.runtime.image.check_compressed` refuses it
        (format, empty, signature, truncated JPEG, declared size too large for the node or
        for the data).
    """
    try:
        return decoding.check_compressed(msg.data, msg.format)
    except ImageError as exc:
        raise MessageError(str(exc)) from None


def compressed_to_array(msg: CompressedImage) -> Tuple[np.ndarray, str]:
    """Decode a jpeg or png ``CompressedImage`` to ``HxWx3`` and its order (``'bgr8'``).

    ``'rgb8'`` only when the format string says the stored data is RGB.

    :rtype: tuple(numpy.ndarray, str)
    :raises MessageError: when :func:`check_compressed` refuses it or decoding fails.
    """
    try:
        return decoding.decode_compressed(msg.data, msg.format)
    except ImageError as exc:
        raise MessageError(str(exc)) from None


def array_to_image(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """Return a ``sensor_msgs/Image`` holding ``pixels`` (``HxW`` or ``HxWxC``) and ``header``.

    Multi-byte pixels are written little-endian (``is_bigendian = 0``).

    :param pixels: uint8 or uint16 array.
    :param encoding: the encoding name to put in the message, e.g. ``mono8`` or ``rgb8``.
    :param header: copied by reference; pass the input image's header to keep its stamp.
    """
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('<u2', copy=False)
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    msg = Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                step=pixels.strides[0])
    data = array.array('B')
    data.frombytes(pixels.data.cast('B'))
    msg.data = data
    return msg


def label_map_to_image(label_map: np.ndarray, header: Header) -> Image:
    """Return a label map as ``mono8`` (uint8 class ids) or ``mono16`` (uint16) image.

    :raises ValueError: for another dtype.
    """
    if label_map.dtype == np.uint8:
        return array_to_image(label_map, 'mono8', header)
    if label_map.dtype == np.uint16:
        return array_to_image(label_map, 'mono16', header)
    raise ValueError(f'label maps are uint8 or uint16, got {label_map.dtype}')


def scaled_camera_info(info: CameraInfo, width: int, height: int, header: Header) -> CameraInfo:
    """Return ``info`` rescaled to an image of ``width`` x ``height`` with ``header``.

    Focal lengths, principal point and the region of interest scale with the image, as
    image_proc's resize does; distortion and rectification are unchanged.
    """
    source_w = info.width or width
    source_h = info.height or height
    sx, sy = width / source_w, height / source_h
    out = CameraInfo(header=header, width=width, height=height,
                     distortion_model=info.distortion_model, d=list(info.d), r=list(info.r),
                     binning_x=info.binning_x, binning_y=info.binning_y)
    k = list(info.k)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    out.k = k
    p = list(info.p)
    p[0], p[2], p[3], p[5], p[6] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy
    out.p = p
    roi = info.roi
    out.roi.x_offset = int(round(roi.x_offset * sx))
    out.roi.y_offset = int(round(roi.y_offset * sy))
    out.roi.width = int(round(roi.width * sx))
    out.roi.height = int(round(roi.height * sy))
    out.roi.do_rectify = roi.do_rectify
    return out


#: ``CompressedImage.format`` of a PNG label map, as image_transport's png plugin names it.
def png_format(encoding: str) -> str:
    """Return the ``format`` string image_transport writes for a PNG of ``encoding``."""
    return f'{encoding}; png compressed '


def label_map_to_png(label_map: np.ndarray, header: Header) -> CompressedImage:
    """Return a label map as a lossless PNG ``CompressedImage`` (mono8 or mono16).

    Decoding it (``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)``) gives the label map exactly.

    :raises ValueError: for a dtype other than uint8 or uint16.
    """
    if label_map.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'label maps are uint8 or uint16, got {label_map.dtype}')
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(label_map),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f'cannot encode a {label_map.shape} label map as png')
    msg = CompressedImage(header=header)
    msg.format = png_format('mono8' if label_map.dtype == np.uint8 else 'mono16')
    data = array.array('B')
    data.frombytes(encoded.tobytes())
    msg.data = data
    return msg
