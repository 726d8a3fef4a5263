"""Build a rosbag2 bag from a folder of images (and their ground-truth label images).

Layout of the bag, for an image topic ``T``:

- ``T``: the camera images, ``sensor_msgs/Image`` (``rgb8`` or ``bgr8``) or, with
  ``jpeg`` / ``png``, ``sensor_msgs/CompressedImage`` (name the topic ``.../compressed`` as
  image_transport would, e.g. ``/camera/image/compressed``);
- ``B/label_gt``: ground truth as ``mono8`` ``sensor_msgs/Image`` (lossless, the label
  file's own pixel values), same header as its image; ``B`` is ``T`` without a trailing
  ``/compressed``;
- metadata ``custom_data``: ``evit_ros.label_format`` so ``replay`` knows how to read the
  labels.

Stamps start at ``start_ns`` and are spaced ``1/rate`` apart; the header stamp and the bag
timestamp of each message are equal.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np

from evit_ros.eval.bags import BagError, BagWriter, COMPRESSED, IMAGE, NS

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff', '.webp')
ENCODINGS = ('rgb8', 'bgr8', 'jpeg', 'png')
LABEL_FORMAT_KEY = 'evit_ros.label_format'
#: Cityscapes file-name suffixes: image, then label per label format.
CITYSCAPES_IMAGE = '_leftImg8bit'
CITYSCAPES_LABELS = {'cityscapes': '_gtFine_labelIds', 'trainid': '_gtFine_labelTrainIds'}


def base_topic(topic: str) -> str:
    """Return ``topic`` without a trailing ``/compressed``."""
    return topic[:-len('/compressed')] if topic.endswith('/compressed') else topic


def label_topic(topic: str) -> str:
    """Ground-truth topic beside image topic ``topic``."""
    return base_topic(topic).rstrip('/') + '/label_gt'


def label_map_topic(topic: str) -> str:
    """Predicted label-map topic beside image topic ``topic``."""
    return base_topic(topic).rstrip('/') + '/label_map'


def list_images(folder) -> List[Path]:
    """Return the image files of ``folder``, sorted by name.

    :raises BagError: when the folder is missing or holds no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BagError(f'image folder {folder} does not exist')
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise BagError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {folder}')
    return files


def label_stems(image_stem: str, label_format: Optional[str]) -> List[str]:
    """Return the label file stems that belong to an image, most specific first.

    Cityscapes ``<x>_leftImg8bit`` pairs with ``<x>_gtFine_labelIds`` (``cityscapes``) or
    ``<x>_gtFine_labelTrainIds`` (``trainid``); otherwise (CamVid, ADE20K) the same stem.
    """
    stems = []
    if image_stem.endswith(CITYSCAPES_IMAGE):
        root = image_stem[:-len(CITYSCAPES_IMAGE)]
        preferred = CITYSCAPES_LABELS.get(label_format or '', None)
        suffixes = [preferred] if preferred else []
        suffixes += [s for s in CITYSCAPES_LABELS.values() if s not in suffixes]
        stems += [root + s for s in suffixes]
    stems.append(image_stem)
    return stems


def pair_labels(images: List[Path], labels_dir, label_format: Optional[str]) -> Dict[Path, Path]:
    """Return image -> label file for every image whose label is found in ``labels_dir``.

    :raises BagError: when the folder is missing or no image has a label.
    """
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise BagError(f'label folder {labels_dir} does not exist')
    by_stem = {p.stem: p for p in labels_dir.iterdir()
               if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = {}
    for image in images:
        for stem in label_stems(image.stem, label_format):
            if stem in by_stem:
                pairs[image] = by_stem[stem]
                break
    if not pairs:
        raise BagError(f'none of the {len(images)} images in {images[0].parent} has a label '
                       f'in {labels_dir} (paired by file name: same stem, or Cityscapes '
                       f'<x>_leftImg8bit -> <x>_gtFine_labelIds / _labelTrainIds)')
    return pairs


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel class-id image (8-bit; 16-bit only with ids below 256).

    :raises BagError: for unreadable, colour or out-of-range label images.
    """
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise BagError(f'cannot read label image {path}')
    if label.ndim == 3:
        if label.shape[2] >= 3 and (np.any(label[:, :, 0] != label[:, :, 1])
                                    or np.any(label[:, :, 0] != label[:, :, 2])):
            raise BagError(f'label {path} is a colour image; give single-channel class-id '
                           f'images (e.g. CamVid valannot, Cityscapes *_labelIds.png)')
        label = label[:, :, 0]
    if label.dtype != np.uint8:
        if label.max() > 255:
            raise BagError(f'label {path} has class ids above 255; mono8 labels only')
        label = label.astype(np.uint8)
    return label


@dataclass
class MakeBagResult:
    """What :func:`write_bag` wrote."""

    path: Path
    frames: int
    labelled: int
    topic: str
    label_topic: Optional[str]
    duration_s: float


def write_bag(frames: Iterable[Tuple[str, np.ndarray, Optional[np.ndarray]]], out,
              topic: str, rate: float = 10.0, encoding: str = 'rgb8',
              storage: str = 'mcap', frame_id: str = 'camera',
              label_format: Optional[str] = None, start_ns: Optional[int] = None,
              on_frame: Optional[Callable[[int], None]] = None) -> MakeBagResult:
    """Write ``(name, bgr_image, label_or_None)`` frames into a new bag at ``out``.

    :param frames: images as OpenCV reads them (BGR ``HxWx3`` uint8) and optional labels.
    :param rate: frames per second of the stamps.
    :param encoding: ``rgb8``/``bgr8`` (Image) or ``jpeg``/``png`` (CompressedImage).
    :param label_format: recorded in the metadata when labels are written.
    :param start_ns: stamp of the first frame (default: now, whole seconds).
    :param on_frame: called with the count after each frame (progress).
    :raises BagError: for bad arguments, or a label that does not fit its image.
    """
    if encoding not in ENCODINGS:
        raise BagError(f'unknown encoding {encoding!r}; choose one of {", ".join(ENCODINGS)}')
    if not rate or rate <= 0:
        raise BagError(f'rate must be positive, got {rate}')
    if not topic.startswith('/'):
        topic = '/' + topic
    start = int(time.time()) * NS if start_ns is None else int(start_ns)
    gt_topic = label_topic(topic)
    count = labelled = 0
    bag = BagWriter(out, storage)
    try:
        bag.add_topic(topic, COMPRESSED if encoding in ('jpeg', 'png') else IMAGE)
        for name, bgr, label in frames:
            if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
                raise BagError(f'{name}: expected an 8-bit colour image')
            stamp = start + int(round(count * NS / rate))
            if encoding in ('jpeg', 'png'):
                params = [cv2.IMWRITE_JPEG_QUALITY, 95] if encoding == 'jpeg' else []
                ok, data = cv2.imencode('.' + ('jpg' if encoding == 'jpeg' else 'png'), bgr,
                                        params)
                if not ok:
                    raise BagError(f'{name}: cannot encode as {encoding}')
                bag.write_compressed(topic, data.tobytes(), f'bgr8; {encoding} compressed bgr8',
                                     stamp, frame_id)
            else:
                pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if encoding == 'rgb8' else bgr
                bag.write_image(topic, pixels, stamp, frame_id, encoding=encoding)
            if label is not None:
                if label.shape[:2] != bgr.shape[:2]:
                    raise BagError(f'{name}: label is {label.shape[1]}x{label.shape[0]} but '
                                   f'the image is {bgr.shape[1]}x{bgr.shape[0]}')
                if labelled == 0:
                    bag.add_topic(gt_topic, IMAGE)
                    if label_format:
                        bag.set_custom_data(LABEL_FORMAT_KEY, label_format)
                bag.write_image(gt_topic, label, stamp, frame_id, encoding='mono8')
                labelled += 1
            count += 1
            if on_frame:
                on_frame(count)
        if count == 0:
            raise BagError('no frames to write')
    except BaseException:
        # A half-written bag is worse than none: remove it, then report the cause.
        bag.close()
        shutil.rmtree(out, ignore_errors=True)
        raise
    bag.close()
    return MakeBagResult(Path(out), count, labelled, topic, gt_topic if labelled else None,
                         (count - 1) / rate)


def folder_frames(images: List[Path], pairs: Dict[Path, Path]):
    """Yield ``(name, bgr, label)`` for image files, reading each label from ``pairs``.

    :raises BagError: for an unreadable image.
    """
    for path in images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f'cannot read image {path}')
        label = read_label(pairs[path]) if path in pairs else None
        yield path.name, bgr, label


def make_bag(images_dir, out, topic: str, labels_dir=None, label_format: Optional[str] = None,
             rate: float = 10.0, encoding: str = 'rgb8', storage: str = 'mcap',
             frame_id: str = 'camera', max_frames: Optional[int] = None,
             start_ns: Optional[int] = None,
             on_frame: Optional[Callable[[int], None]] = None) -> MakeBagResult:
    """Build a bag from an image folder (and optional label folder); see the module doc.

    :raises BagError: with one line saying what is wrong.
    """
    images = list_images(images_dir)
    if max_frames:
        images = images[:max_frames]
    pairs = pair_labels(images, labels_dir, label_format) if labels_dir else {}
    return write_bag(folder_frames(images, pairs), out, topic, rate=rate, encoding=encoding,
                     storage=storage, frame_id=frame_id,
                     label_format=label_format if pairs else None, start_ns=start_ns,
                     on_frame=on_frame)
