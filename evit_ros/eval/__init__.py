"""Evaluation layer: ground-truth label formats, metrics, rosbag replay and reports."""
