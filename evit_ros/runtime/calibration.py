"""Int8 calibration data: network inputs from a folder of images or a rosbag2 bag.

TensorRT's entropy calibrator needs a few hundred representative frames, preprocessed
exactly as at inference. :class:`CalibrationData` picks up to ``max_images`` of them, spread
evenly over the folder (sorted by path) or over the bag's image topic, fingerprints them
(the sha256 goes into the engine's cache key) and yields them one ``1x3xHxW`` float32 input
at a time, so a large set never sits in memory at once.
"""

import hashlib
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from evit_ros.runtime.image import decode_to_rgb, ImageError
from evit_ros.runtime.preprocess import preprocess

#: image files a calibration folder may hold.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
#: bag message types read as calibration images.
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
DEFAULT_MAX_IMAGES = 100
# Part of the fingerprint: bump when the preprocessing of calibration inputs changes.
_RECIPE = b'evit_ros calibration v1'


class CalibrationError(ValueError):
    """Calibration data that cannot be used; the message says what to pass instead."""


def _spread(count: int, limit: int) -> List[int]:
    """Return up to ``limit`` indices spread evenly over ``range(count)``."""
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, limit)})


def is_bag(path: Union[str, os.PathLike]) -> bool:
    """Return whether ``path`` is a rosbag2 folder or one of its storage files."""
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.suffix in ('.db3', '.mcap')


class CalibrationData:
    """A fixed, fingerprinted set of calibration inputs.

    :param path: a folder of images (searched recursively) or a rosbag2 bag (its folder or
        its ``.db3`` / ``.mcap`` file).
    :param input_size: network ``(height, width)``.
    :param max_images: most frames used, spread evenly over the source.
    :param topic: image topic of a bag; default its only image topic.
    :raises CalibrationError: for a missing path, no images, or an ambiguous bag topic.
    """

    def __init__(self, path: Union[str, os.PathLike], input_size: Tuple[int, int],
                 max_images: int = DEFAULT_MAX_IMAGES, topic: Optional[str] = None):
        self.path = Path(path).expanduser()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if max_images < 1:
            raise CalibrationError(f'max_images must be >= 1, got {max_images}')
        if not self.path.exists():
            raise CalibrationError(f'calibration data {self.path} does not exist; pass a '
                                   'folder of images or a rosbag2 bag')
        self.kind = 'bag' if is_bag(self.path) else 'folder'
        digest = hashlib.sha256(_RECIPE)
        if self.kind == 'folder':
            if not self.path.is_dir():
                raise CalibrationError(f'calibration data {self.path} is neither a folder of '
                                       'images nor a rosbag2 bag (.db3/.mcap or its folder)')
            self.files = self._pick_files(max_images)
            for file in self.files:
                digest.update(str(file.relative_to(self.path)).encode() + b'\0')
                digest.update(file.read_bytes())
            self.count = len(self.files)
        else:
            self.bag = self.path if self.path.is_dir() else self.path.parent
            self.topic, self.indices = self._pick_messages(topic, max_images, digest)
            self.count = len(self.indices)
        #: sha256 of the frames used (and how they are read): part of the engine cache key.
        self.sha256 = digest.hexdigest()

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield each frame as a ``1x3xHxW`` float32 network input."""
        frames = self._folder_frames() if self.kind == 'folder' else self._bag_frames()
        for rgb in frames:
            yield preprocess(rgb, self.input_size)

    def describe(self) -> str:
        """Return e.g. ``100 frames of /image in bag run1``."""
        if self.kind == 'folder':
            return f'{self.count} images from {self.path}'
        return f'{self.count} frames of {self.topic} in bag {self.bag}'

    # -- folders -----------------------------------------------------------------------

    def _pick_files(self, max_images: int) -> List[Path]:
        files = sorted(p for p in self.path.rglob('*')
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and cv2.haveImageReader(str(p)))
        if not files:
            raise CalibrationError(f'no readable images ({", ".join(IMAGE_SUFFIXES)}) in '
                                   f'{self.path}')
        return [files[i] for i in _spread(len(files), max_images)]

    def _folder_frames(self) -> Iterator[np.ndarray]:
        for file in self.files:
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise CalibrationError(f'cannot decode calibration image {file}')
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    # -- bags --------------------------------------------------------------------------

    def _reader(self):
        try:  # rosbags is needed only for bags
            from rosbags.highlevel import AnyReader
            from rosbags.typesys import get_typestore, Stores
        except ImportError as exc:
            raise CalibrationError(f'reading a bag needs the rosbags package ({exc}); '
                                   'pip install rosbags, or pass a folder of images') from None
        try:
            return AnyReader([self.bag], default_typestore=get_typestore(Stores.LATEST))
        except Exception as exc:  # rosbags raises its own error types for bad bags
            raise CalibrationError(f'cannot open bag {self.bag}: {exc}') from None

    def _pick_messages(self, topic: Optional[str], max_images: int, digest
                       ) -> Tuple[str, List[int]]:
        try:
            with self._reader() as reader:
                images = {c.topic: c for c in reader.connections
                          if _modern_type(c.msgtype) in IMAGE_TYPES}
                if topic is None:
                    if len(images) != 1:
                        found = ', '.join(sorted(images)) or 'none'
                        raise CalibrationError(
                            f'bag {self.bag} has {len(images)} image topics ({found}); '
                            'choose one with --calib-topic')
                    topic = next(iter(images))
                if topic not in images:
                    raise CalibrationError(
                        f'bag {self.bag} has no image topic {topic}; its image topics: '
                        f'{", ".join(sorted(images)) or "none"}')
                connections = [c for c in reader.connections if c.topic == topic]
                total = sum(c.msgcount for c in connections)
                indices = _spread(total, max_images)
                wanted = set(indices)
                digest.update(topic.encode() + b'\0')
                for index, (_, _, raw) in enumerate(reader.messages(connections=connections)):
                    if index in wanted:
                        digest.update(bytes(raw))
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f'cannot read bag {self.bag}: {exc}') from None
        if not indices:
            raise CalibrationError(f'topic {topic} of bag {self.bag} has no messages')
        return topic, indices

    def _bag_frames(self) -> Iterator[np.ndarray]:
        wanted = set(self.indices)
        with self._reader() as reader:
            connections = [c for c in reader.connections if c.topic == self.topic]
            for index, (connection, _, raw) in enumerate(
                    reader.messages(connections=connections)):
                if index in wanted:
                    msgtype = _modern_type(connection.msgtype)
                    yield image_from_message(reader.deserialize(raw, msgtype), msgtype)


def _modern_type(msgtype: str) -> str:
    """``sensor_msgs/Image`` (bags before Foxy) -> ``sensor_msgs/msg/Image``."""
    parts = msgtype.split('/')
    return f'{parts[0]}/msg/{parts[1]}' if len(parts) == 2 else msgtype


def image_from_message(msg, msgtype: str) -> np.ndarray:
    """Return ``HxWx3`` RGB from a deserialised ``Image`` or ``CompressedImage`` message.

    The node's decoding rules (:func:`evit_ros.runtime.image.decode_to_rgb`), so a frame
    the node would refuse is refused here with the same reason.

    :raises CalibrationError: with the decoder's one-line reason.
    """
    try:
        return decode_to_rgb(msgtype, msg)
    except ImageError as exc:
        raise CalibrationError(str(exc)) from None
