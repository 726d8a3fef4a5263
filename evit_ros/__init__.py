"""evit_ros: EfficientViT semantic segmentation for ROS 2 robots and cars."""

__version__ = '0.1.0'
