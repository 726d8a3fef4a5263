"""A folder of images with ground-truth label PNGs, scored as one data set.

Used to check an artifact's accuracy before it is written: ``score(segment)`` runs
``segment(rgb) -> label_map`` on every frame and returns the data-set mIoU (one confusion
matrix over all frames, :mod:`.metrics`) in the evaluation label set of a
:class:`~evit_ros.eval.labels.LabelMapping`. The CamVid layout (``val/`` and ``valannot/``
with the same file names) is read by :meth:`LabelledImages.camvid`.
"""

from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import cv2
import numpy as np

from evit_ros.eval.labels import LabelMapping, MAPPINGS
from evit_ros.eval.metrics import ConfusionMatrix

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


class LabelledDataError(ValueError):
    """Labelled data that cannot be used; the message says what to pass instead."""


def spread(count: int, limit: Optional[int]) -> List[int]:
    """Return up to ``limit`` indices spread evenly over ``range(count)`` (all for None)."""
    if limit is None or count <= limit:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, limit)})


class LabelledImages:
    """Images and their label PNGs (same file stem), scored through ``mapping``.

    :param images: folder of RGB images.
    :param labels: folder of single-channel label PNGs named like the images.
    :param mapping: name of a :data:`~evit_ros.eval.labels.MAPPINGS` entry (``camvid``).
    :param frames: use this many frames spread evenly over the sorted set (default all).
    :raises LabelledDataError: for missing folders, no images, or a missing label.
    """

    def __init__(self, images: Union[str, Path], labels: Union[str, Path],
                 mapping: str = 'camvid', frames: Optional[int] = None):
        self.images, self.labels = Path(images), Path(labels)
        for folder in (self.images, self.labels):
            if not folder.is_dir():
                raise LabelledDataError(f'labelled data folder {folder} does not exist')
        if frames is not None and frames < 1:
            raise LabelledDataError(f'check frames must be >= 1, got {frames}')
        self.mapping: LabelMapping = MAPPINGS[mapping]
        self.name = mapping
        self.source = self.images
        files = sorted(p for p in self.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise LabelledDataError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {self.images}')
        self.files = [files[i] for i in spread(len(files), frames)]
        for file in self.files:
            if not (self.labels / (file.stem + '.png')).is_file():
                raise LabelledDataError(f'image {file.name} has no label '
                                        f'{self.labels / (file.stem + ".png")}')

    @classmethod
    def camvid(cls, root: Union[str, Path], frames: Optional[int] = None
               ) -> 'LabelledImages':
        """Return the CamVid val set under ``root`` (``val/`` + ``valannot/``, or ``val/``)."""
        root = Path(root).expanduser()
        if (root / 'val').is_dir() and (root / 'valannot').is_dir():
            return cls(root / 'val', root / 'valannot', 'camvid', frames)
        if root.is_dir() and (root.parent / (root.name + 'annot')).is_dir():
            return cls(root, root.parent / (root.name + 'annot'), 'camvid', frames)
        raise LabelledDataError(f'{root} is not CamVid val data: expected {root}/val and '
                                f'{root}/valannot (e.g. ../shared/data/camvid)')

    def __len__(self) -> int:
        return len(self.files)

    def read_rgb(self, file: Path) -> np.ndarray:
        """Return an image of the set as ``HxWx3`` uint8 RGB."""
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise LabelledDataError(f'cannot decode image {file}')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def first_image(self) -> np.ndarray:
        """Return the first frame as RGB (a real frame for other checks)."""
        return self.read_rgb(self.files[0])

    def score(self, segment: Callable[[np.ndarray], np.ndarray]) -> Dict[str, object]:
        """Segment every frame and return ``miou`` and ``per_class`` (percent), ``label_maps``.

        :param segment: RGB image -> label map in the model's classes, at the image's size.
        """
        class_names = self.mapping.class_names
        matrix = ConfusionMatrix(len(class_names))
        label_maps = []
        for file in self.files:
            label = cv2.imread(str(self.labels / (file.stem + '.png')), cv2.IMREAD_UNCHANGED)
            if label is None or label.ndim != 2:
                raise LabelledDataError(f'cannot read single-channel label for {file.name}')
            label_map = segment(self.read_rgb(file))
            if label_map.shape != label.shape:
                raise LabelledDataError(f'label map {label_map.shape} and label '
                                        f'{label.shape} of {file.name} differ')
            matrix.update(self.mapping.ground_truth(label), self.mapping.prediction(label_map))
            label_maps.append(label_map)
        per_class = {name: None if value is None else 100.0 * value
                     for name, value in matrix.per_class_iou(class_names).items()}
        return {'miou': 100.0 * matrix.miou(), 'per_class': per_class,
                'label_maps': label_maps}
