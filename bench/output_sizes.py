#!/usr/bin/env python3
"""Bytes per frame of each node output at 1024x2048, on the real shared street frame.

Segments ``data/frames/city_2048x1024.png`` with the official B0 (backend auto, network
1024x2048), builds each output message exactly as the node does and prints its serialized
(CDR) size, the bytes that travel between computers::

    python bench/output_sizes.py
"""

import os
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    """Print the serialized size of every output for one 1024x2048 frame."""
    root = Path(os.environ.get('EVIT_ROS_SHARED', REPO.parent / 'shared'))
    path = root / 'data' / 'frames' / 'city_2048x1024.png'
    weights = root / 'weights' / 'efficientvit_seg_b0_cityscapes.pt'
    bgr = cv2.imread(str(path))
    if bgr is None or not weights.is_file():
        print(f'error: needs {path} and {weights}', file=sys.stderr)
        return 1
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header
    from evit_ros.model import get_entry
    from evit_ros.ros.messages import array_to_image, label_map_to_image, label_map_to_png
    from evit_ros.runtime import Segmenter
    from evit_ros.runtime.confidence import confidence_map
    segmenter = Segmenter('b0-cityscapes', backend='auto', weights=str(weights),
                          input_size=(1024, 2048))
    label_map = segmenter.segment(bgr, 'bgr8')
    header = Header(frame_id='camera')
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    colours = get_entry('b0-cityscapes').palette
    colour = np.asarray(colours, np.uint8)[label_map]
    outputs = {
        'image (input, rgb8)': array_to_image(rgb, 'rgb8', header),
        'label_map (mono8)': label_map_to_image(label_map, header),
        'label_map/compressed (png)': label_map_to_png(label_map, header),
        'confidence (mono8)': array_to_image(confidence_map(segmenter.logits,
                                                            label_map.shape), 'mono8', header),
        'color_mask (rgb8)': array_to_image(colour, 'rgb8', header),
        'overlay (rgb8)': array_to_image(colour, 'rgb8', header),
    }
    print(f'{label_map.shape[0]}x{label_map.shape[1]} frame {path.name}, '
          f'b0-cityscapes on {segmenter.backend_name}')
    print('| output | bytes per frame |')
    print('|---|---|')
    for name, msg in outputs.items():
        print(f'| {name} | {len(serialize_message(msg)):,} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
