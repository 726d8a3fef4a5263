"""ROS 2 layer: the segmentation node, message conversion, parameters and diagnostics.

The node is thin: it converts ``sensor_msgs`` images to numpy, calls
:class:`evit_ros.runtime.Segmenter` (one batch for the frames of several cameras), and
publishes label maps with each camera's header. It is a lifecycle node.
"""
