"""Runtime layer: backends, export and the Segmenter (no ROS in here)."""

from evit_ros.runtime.backends import BackendUnavailable
from evit_ros.runtime.image import ImageError
from evit_ros.runtime.segmenter import Segmenter, Timings

__all__ = ['BackendUnavailable', 'ImageError', 'Segmenter', 'Timings']
