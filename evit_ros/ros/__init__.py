"""ROS 2 layer: the segmentation node, message conversion, parameters and diagnostics.

The node is thin: it converts ``sensor_msgs`` images to numpy, calls
:class:`evit_ros.runtime.Segmenter`, and publishes label maps with the input's header.
"""
