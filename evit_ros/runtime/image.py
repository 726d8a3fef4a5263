"""Camera images: decoding message bytes, and encodings to network-ready RGB.

One set of rules for every way an image arrives (the node's subscriptions, bags, calibration
sets): :func:`decode_raw` for ``sensor_msgs/Image`` fields and :func:`decode_compressed` for
``sensor_msgs/CompressedImage`` data and its format string. Each refusal is an
:class:`ImageError` whose text is one line saying what is wrong and what to send instead.
"""

import array
import re
from typing import Dict, Optional, Tuple

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


#: Every raw encoding :func:`decode_raw` can read: name -> (numpy dtype, channels). The
#: 16-bit ones are for label maps; segmentation takes the 8-bit :data:`ENCODINGS`.
RAW_ENCODINGS: Dict[str, Tuple[str, int]] = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'mono8': ('u1', 1), 'mono16': ('u2', 1),
    '8UC1': ('u1', 1), '8UC3': ('u1', 3), '8UC4': ('u1', 4), '16UC1': ('u2', 1),
    'yuv422': ('u1', 2), 'uyvy': ('u1', 2), 'yuv422_yuy2': ('u1', 2), 'yuyv': ('u1', 2),
}
#: Largest compressed image decoded (pixels); bigger headers are refused unread.
MAX_DECODED_PIXELS = 8192 * 8192
#: Most pixels a compressed image may declare per byte of data. The densest real encodings
#: measured (a uniform 8-bit grey png at zlib level 9, ~1000 px/byte; progressive jpeg,
#: ~250) stay well below; a few hundred bytes declaring thousands of pixels squared are a
#: header forged or corrupted, and decoding it would allocate the declared size (libjpeg
#: fills a short scan with grey) for nothing.
MAX_PIXELS_PER_BYTE = 4096

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# sensor_msgs names with more than one byte per channel (e.g. mono16, 32FC1, bgra16).
_MULTI_BYTE_NAME = re.compile(r'^(?:[a-z]+16|(?:16|32|64)[USF]C\d+)$')


def byte_view(data) -> memoryview:
    """Return a message payload as a flat byte buffer without copying where possible.

    Accepts what message libraries hand out: ``array.array`` (rclpy), a numpy array
    (rosbags), ``bytes``, ``bytearray``, ``memoryview`` or a list of ints.
    """
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    if isinstance(data, (bytes, bytearray, array.array, memoryview)):
        return memoryview(data).cast('B')
    return memoryview(bytes(data))


def decode_raw(data, width: int, height: int, step: int, encoding: str,
               is_bigendian: bool = False, encodings=None) -> Tuple[np.ndarray, str]:
    """Return the pixels of a raw ``sensor_msgs/Image`` as ``HxWxC`` and its encoding.

    8-bit data is a view of ``data`` (row padding skipped, no copy); 16-bit data is copied
    into native byte order.

    :param data: the message's ``data`` (see :func:`byte_view`).
    :param encodings: the encodings accepted (default every one of :data:`RAW_ENCODINGS`);
        segmentation passes :data:`ENCODINGS`.
    :raises ImageError: for zero size, an encoding outside ``encodings``, big-endian data in
        an encoding that is not accepted, an odd width in YUV 4:2:2, a step shorter than a
        row, or data whose size is not ``step * height``.
    """
    accepted = RAW_ENCODINGS if encodings is None else encodings
    width, height, step = int(width), int(height), int(step)
    if width == 0 or height == 0:
        raise ImageError(f'zero-size image {width}x{height}; publish an image with pixels')
    if encoding not in accepted or encoding not in RAW_ENCODINGS:
        # Name the camera encodings: what a publisher should send instead.
        cameras = ', '.join(name for name in accepted if name in ENCODINGS)
        if is_bigendian and _MULTI_BYTE_NAME.match(encoding):
            raise ImageError(f'big-endian {encoding} image (is_bigendian=1) is not '
                             f'supported; publish 8-bit images: {cameras}')
        raise ImageError(f'unsupported encoding {encoding!r}; supported: {cameras}')
    dtype, channels = RAW_ENCODINGS[encoding]
    if channels == 2 and width % 2:
        raise ImageError(f'{encoding} (YUV 4:2:2) needs an even width, got {width}')
    itemsize = np.dtype(dtype).itemsize
    row = width * channels * itemsize
    if step < row:
        raise ImageError(f'step {step} is shorter than a row of a {width}x{height} '
                         f'{encoding} image ({row} bytes); set step >= width * channels')
    buffer = byte_view(data)
    expected = step * height
    if len(buffer) < expected:
        raise ImageError(f'truncated image: {width}x{height} {encoding} with step {step} '
                         f'needs {expected} bytes, got {len(buffer)}')
    if len(buffer) > expected:
        raise ImageError(f'data size {len(buffer)} does not match step * height = '
                         f'{step} * {height} = {expected} for {width}x{height} {encoding}')
    rows = np.frombuffer(buffer, dtype=np.uint8).reshape(height, step)[:, :row]
    if itemsize == 1:
        return rows.reshape(height, width, channels), encoding
    order = '>' if is_bigendian else '<'
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order))
    return pixels.astype(dtype).reshape(height, width, channels), encoding


def compressed_kind(fmt: str) -> str:
    """Return ``'jpeg'`` or ``'png'`` for a ``CompressedImage`` format string.

    Understands image_transport's forms (``"bgr8; jpeg compressed bgr8"``,
    ``"rgb8; png compressed"``) and the plain ``"jpeg"`` / ``"png"`` of older drivers.

    :raises ImageError: for another format, depth images (``compressedDepth``) included.
    """
    lowered = fmt.lower()
    if 'compresseddepth' not in lowered:
        if 'jpeg' in lowered or 'jpg' in lowered:
            return 'jpeg'
        if 'png' in lowered:
            return 'png'
    raise ImageError(f'unsupported compressed format {fmt!r}; publish jpeg or png '
                     f'(image_transport "compressed")')


def compressed_order(fmt: str) -> str:
    """Return the channel order the decoded pixels are in: ``'rgb8'`` or ``'bgr8'``.

    image_transport writes ``"<original>; <codec> compressed <stored>"`` and stores colour
    as bgr8; a ``stored`` rgb8 (some drivers encode RGB buffers directly) means the decoded
    channels are RGB. Without a ``stored`` part the data is bgr8, as OpenCV writes it.
    """
    _, _, stored = fmt.lower().partition(' compressed ')
    return 'rgb8' if stored.strip().startswith('rgb') else 'bgr8'


def check_compressed(data, fmt: str) -> str:
    """Check compressed image data without decoding it; return ``'jpeg'`` or ``'png'``.

    :raises ImageError: for an unsupported format, empty data, a bad signature, a truncated
        JPEG, a declared size beyond :data:`MAX_DECODED_PIXELS`, or one implausibly large
        for the data (more than :data:`MAX_PIXELS_PER_BYTE` pixels per byte).
    """
    kind = compressed_kind(fmt)
    buffer = byte_view(data)
    if len(buffer) == 0:
        raise ImageError(f'empty {kind} image (0 bytes)')
    width, height = _declared_size(buffer, kind)
    if width == 0 or height == 0:
        raise ImageError(f'zero-size {kind} image {width}x{height}')
    if width * height > MAX_DECODED_PIXELS:
        raise ImageError(f'{kind} declares {width}x{height} pixels, more than the '
                         f'{MAX_DECODED_PIXELS} this node decodes; corrupt or not a '
                         f'camera image')
    if width * height > MAX_PIXELS_PER_BYTE * len(buffer):
        raise ImageError(f'{kind} declares {width}x{height} pixels in only {len(buffer)} '
                         f'bytes (over {MAX_PIXELS_PER_BYTE} pixels per byte); corrupt '
                         f'header, not decoded')
    if kind == 'jpeg' and b'\xff\xd9' not in bytes(buffer[-16:]):
        raise ImageError(f'truncated jpeg: no end-of-image marker in {len(buffer)} bytes')
    return kind


def decode_compressed(data, fmt: str, keep_depth: bool = False) -> Tuple[np.ndarray, str]:
    """Decode a ``CompressedImage``'s data after :func:`check_compressed` accepts it.

    :param keep_depth: keep single-channel images single-channel and 16-bit PNGs 16-bit
        (for label maps: ``mono8`` / ``mono16``); otherwise every image decodes to three
        8-bit channels.
    :returns: ``(HxWx3, 'bgr8' or 'rgb8' as :func:`compressed_order` says)``, or with
        ``keep_depth`` ``(HxW, 'mono8' | 'mono16')`` for single-channel data.
    :raises ImageError: when it is refused or cannot be decoded.
    """
    kind = check_compressed(data, fmt)
    buffer = np.frombuffer(byte_view(data), dtype=np.uint8)
    flag = cv2.IMREAD_UNCHANGED if keep_depth else cv2.IMREAD_COLOR
    pixels = cv2.imdecode(buffer, flag)
    if pixels is None or pixels.size == 0:
        raise ImageError(f'corrupt {kind}: cannot decode {buffer.size} bytes')
    if pixels.ndim == 2:
        return pixels, 'mono16' if pixels.dtype == np.uint16 else 'mono8'
    if pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
    if pixels.dtype != np.uint8:
        pixels = (pixels >> 8).astype(np.uint8)
    return pixels, compressed_order(fmt)


def decode_image(msgtype: str, msg, encodings=None, keep_depth: bool = False
                 ) -> Tuple[np.ndarray, str]:
    """Decode an ``Image`` or ``CompressedImage`` message (rclpy's or rosbags').

    :param msgtype: the type name; anything ending in ``CompressedImage`` is compressed.
    :param encodings: raw encodings accepted (see :func:`decode_raw`).
    :param keep_depth: see :func:`decode_compressed`.
    :raises ImageError: with the one-line reason.
    """
    if msgtype.endswith('CompressedImage'):
        return decode_compressed(msg.data, str(msg.format), keep_depth)
    return decode_raw(msg.data, msg.width, msg.height, msg.step, str(msg.encoding),
                      bool(msg.is_bigendian), encodings)


def decode_to_rgb(msgtype: str, msg) -> np.ndarray:
    """Return ``HxWx3`` RGB from an image message, by the rules the node segments with.

    :raises ImageError: with the one-line reason.
    """
    pixels, encoding = decode_image(msgtype, msg, encodings=ENCODINGS)
    return to_rgb(pixels, encoding)


def _declared_size(data: memoryview, kind: str) -> Tuple[int, int]:
    """Return ``(width, height)`` from a jpeg or png header without decoding pixels."""
    if kind == 'png':
        raw = bytes(data[:64])
        if raw[:8] != _PNG_MAGIC or raw[12:16] != b'IHDR':
            raise ImageError(f'corrupt png: bad signature in {len(data)} bytes')
        return int.from_bytes(raw[16:20], 'big'), int.from_bytes(raw[20:24], 'big')
    if bytes(data[:3]) != _JPEG_MAGIC:
        raise ImageError(f'corrupt jpeg: bad signature in {len(data)} bytes')
    size = _jpeg_frame_size(data)
    if size is None:
        raise ImageError(f'corrupt jpeg: no frame header in {len(data)} bytes')
    return size


def _jpeg_frame_size(data: memoryview) -> Optional[Tuple[int, int]]:
    """Walk JPEG markers up to the start-of-frame and return its ``(width, height)``."""
    index, end = 2, len(data)
    while index + 9 <= end:
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:                   # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            index += 2                       # markers without a length
            continue
        if marker == 0xDA:                   # start of scan before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = data[index + 5] << 8 | data[index + 6]
            width = data[index + 7] << 8 | data[index + 8]
            return width, height
        index += 2 + (data[index + 2] << 8 | data[index + 3])
    return None
