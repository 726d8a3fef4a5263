"""The single-image API everything else uses: image in, label map out."""

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from evit_ros.model import check_input_size, create_model, get_entry, ModelEntry
from evit_ros.runtime.bicubic import bicubic_argmax
from evit_ros.runtime.image import to_rgb
from evit_ros.runtime.preprocess import labels_from_logits, preprocess

#: how logits become a label map: ``reference`` interpolates every class at every pixel
#: (the release's code), ``fast`` only where the argmax can change (same labels up to
#: float ties, ~10x cheaper at camera resolution), ``auto`` what the backend prefers.
POSTPROCESS = ('auto', 'reference', 'fast')


@dataclass
class Timings:
    """Milliseconds spent in each phase of the last ``segment()`` call."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """Sum of the three phases."""
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass
class InferredBatch:
    """A batch between inference and its label maps (see :meth:`Segmenter.infer_batch`)."""

    #: ``NxCxhxw`` logits (numpy array or torch tensor, on the backend's device).
    logits: object
    #: each image's ``(height, width)``, the default size of its label map.
    shapes: List[Tuple[int, int]]
    preprocess_ms: float
    inference_ms: float


class Segmenter:
    """Segment camera images with an EfficientViT-Seg model on a chosen backend.

    :param model: a registry name (``b0-cityscapes``) or an ``EfficientViTSeg`` module.
    :param backend: ``torch`` (other backends register in :mod:`evit_ros.runtime`).
    :param device: ``cpu`` or ``cuda[:N]``.
    :param input_size: network ``(height, width)``, multiples of 32; default the model's.
    :param weights: ``"official"``, a checkpoint path, or ``None`` for random weights
        (tests only); ignored when ``model`` is a module.
    :param precision: ``fp32``; ``fp16`` on CUDA backends; ``int8`` on tensorrt.
    :param postprocess: ``auto`` (``fast`` for backends returning CPU logits to be resized
        on the CPU, i.e. onnxruntime; ``reference`` otherwise, so torch label maps are
        the release's bit for bit), ``reference`` or ``fast`` (see :data:`POSTPROCESS`).
    :param engine: a prebuilt engine to run as it is, no build and no calibration: a
        TensorRT engine file (backend ``tensorrt``) or an ONNX artifact (backend
        ``onnxruntime``). With backend ``auto`` the file picks the backend (``.onnx``:
        onnxruntime, otherwise tensorrt). The precision that runs is the file's.
    :param backend_options: passed to the backend, e.g. ``threads=2``.
    """

    def __init__(self, model: Union[str, nn.Module] = 'b0-cityscapes', backend: str = 'torch',
                 device: str = 'cpu', input_size: Optional[Tuple[int, int]] = None,
                 weights: Optional[str] = 'official', precision: str = 'fp32',
                 postprocess: str = 'auto', engine: Optional[str] = None,
                 **backend_options):
        if postprocess not in POSTPROCESS:
            raise ValueError(f'postprocess must be one of {", ".join(POSTPROCESS)}, '
                             f'got {postprocess!r}')
        if isinstance(model, str):
            self.entry: Optional[ModelEntry] = get_entry(model)
            module = create_model(model, weights=weights)
        else:
            self.entry = None
            module = model.eval()
        size = tuple(input_size) if input_size else (
            self.entry.input_size if self.entry else (512, 1024))
        check_input_size(*size)
        self.input_size: Tuple[int, int] = (int(size[0]), int(size[1]))
        self.num_classes = module.cfg.num_classes
        self.timings = Timings()
        self.logits: Optional[torch.Tensor] = None
        from evit_ros.runtime.backends.selection import create_backend, prebuilt_options
        chosen, prebuilt = backend, {}
        if engine:
            chosen, prebuilt = prebuilt_options(backend, engine)
        self.backend = create_backend(chosen, module, self.input_size, device=device,
                                      precision=precision, entry=self.entry,
                                      weights=weights, **backend_options, **prebuilt)
        # Kept to build another backend when this one fails (see fall_back()); a fallback
        # builds from the model, not from the prebuilt file.
        self._module = module
        self._build = dict(device=device, precision=precision, entry=self.entry,
                           weights=weights, **backend_options)
        self._postprocess = postprocess
        #: ``reference`` or ``fast``: how :meth:`segment` turns logits into the label map.
        self.postprocess = self._postprocess_for(self.backend)

    def fall_back(self) -> str:
        """Replace the backend by the next one ``auto`` would try after it; return its name.

        For a backend that failed while running. The label maps then are the new backend's
        (as a Segmenter built with that backend gives).

        :raises evit_ros.runtime.BackendUnavailable: when no later backend works; the
            current one is kept.
        """
        from evit_ros.runtime.backends.selection import next_auto_backend
        self.backend = next_auto_backend(self.backend, self._module, self.input_size,
                                         **self._build)
        self.postprocess = self._postprocess_for(self.backend)
        return self.backend.name

    def _postprocess_for(self, backend) -> str:
        """Resolve the requested post-processing (``auto``: the backend's preference)."""
        if self._postprocess == 'auto':
            return getattr(backend, 'postprocess', 'reference')
        return self._postprocess

    @property
    def backend_name(self) -> str:
        """Name of the backend actually running (``auto`` resolves to one)."""
        return self.backend.name

    @property
    def device(self) -> str:
        """Device the running backend computes on (``cpu``, ``cuda:0``...), not the asked one."""
        return str(self.backend.device)

    @property
    def precision(self) -> str:
        """Precision the running backend computes in (a prebuilt engine's own), not the asked."""
        return str(self.backend.precision)

    def segment(self, image: np.ndarray, encoding: str = 'rgb8',
                output_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """Return the label map of one image.

        :param image: ``HxW[xC]`` uint8 pixels in ``encoding``.
        :param encoding: rgb8, bgr8, rgba8, bgra8, mono8 (or yuv422 / yuyv, ``HxWx2``).
        :param output_size: ``(height, width)`` of the label map; default the image's.
        :returns: ``uint8`` class ids (``uint16`` beyond 256 classes).
        :raises evit_ros.runtime.image.ImageError: for an image that cannot be segmented.
        """
        return self.segment_batch([image], [encoding], [output_size])[0]

    def segment_batch(self, images: Sequence[np.ndarray], encodings: Sequence[str],
                      output_sizes: Optional[Sequence[Optional[Tuple[int, int]]]] = None
                      ) -> List[np.ndarray]:
        """Return the label maps of several images from one ``Nx3xHxW`` inference.

        Each image is converted and resized on its own (cameras may differ in size and
        encoding); the network runs once on the stacked batch. Afterwards :attr:`logits`
        holds the batch's ``NxCxhxw`` logits and :attr:`timings` the whole batch's phases.
        Threads sharing the segmenter call :meth:`infer_batch` then :meth:`label_batch`,
        which leave those two attributes alone.

        :param images: ``HxW[xC]`` uint8 pixels, one per camera.
        :param encodings: the encoding of each image (see :meth:`segment`).
        :param output_sizes: ``(height, width)`` per label map; ``None`` (or a ``None``
            entry) keeps that image's size.
        :returns: one label map per image, in order.
        :raises evit_ros.runtime.image.ImageError: for an image that cannot be segmented.
        """
        if len(images) == len(encodings) == 0:
            return []
        inferred = self.infer_batch(images, encodings)
        label_maps, self.timings = self.label_batch(inferred, output_sizes)
        self.logits = inferred.logits
        return label_maps

    def infer_batch(self, images: Sequence[np.ndarray], encodings: Sequence[str]
                    ) -> InferredBatch:
        """Convert, resize and stack the images, and run the network once on them.

        :raises evit_ros.runtime.image.ImageError: for an image that cannot be segmented.
        :raises ValueError: for no images, or not as many encodings as images.
        """
        if len(images) != len(encodings):
            raise ValueError(f'{len(images)} images but {len(encodings)} encodings')
        if not len(images):
            raise ValueError('no images to segment')
        start = time.perf_counter()
        rgbs = [to_rgb(image, encoding) for image, encoding in zip(images, encodings)]
        inputs = [preprocess(rgb, self.input_size) for rgb in rgbs]
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)
        after_pre = time.perf_counter()
        logits = self.backend.infer(x)
        end = time.perf_counter()
        return InferredBatch(logits, [rgb.shape[:2] for rgb in rgbs],
                             (after_pre - start) * 1e3, (end - after_pre) * 1e3)

    def label_batch(self, inferred: InferredBatch,
                    output_sizes: Optional[Sequence[Optional[Tuple[int, int]]]] = None
                    ) -> Tuple[List[np.ndarray], Timings]:
        """Return the label maps of an inferred batch and the batch's timings.

        :param output_sizes: as in :meth:`segment_batch`.
        """
        count = len(inferred.shapes)
        sizes = list(output_sizes) if output_sizes is not None else [None] * count
        start = time.perf_counter()
        label_maps = []
        for index, shape in enumerate(inferred.shapes):
            size = tuple(sizes[index]) if sizes[index] else shape
            one = inferred.logits[index:index + 1]
            if self.postprocess == 'fast':
                label_maps.append(bicubic_argmax(one, size))
            else:
                label_maps.append(labels_from_logits(one, size))
        postprocess_ms = (time.perf_counter() - start) * 1e3
        return label_maps, Timings(inferred.preprocess_ms, inferred.inference_ms,
                                   postprocess_ms)
