"""Replay a rosbag2 recording through the segmentation node on the bag's clock.

    ros2 launch evit_ros replay.launch.py bag:=/data/drive_bag camera:=/camera/image_raw \
        rate:=0.5 model:=b0-cityscapes

``ros2 bag play --clock`` publishes ``/clock`` from the recording and the node runs with
``use_sim_time``, so its pipeline latency and diagnostics stamps are in bag time. Record the
outputs with ``ros2 bag record /segmentation_node/label_map /diagnostics`` in another shell,
or evaluate offline with ``evit-ros replay``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, OpaqueFunction,
                            SetEnvironmentVariable)
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'evit_ros'
EXECUTABLE = 'segmentation_node'


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)
    overrides = {'model': value('model'), 'backend': value('backend'), 'use_sim_time': True}
    node = Node(
        package=PACKAGE, executable=EXECUTABLE, name='segmentation_node',
        parameters=[value('params_file'), {k: v for k, v in overrides.items() if v != ''}],
        remappings=[('~/image', value('camera'))], output='screen', emulate_tty=True)
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', '--clock', '--rate', value('rate'), value('bag')],
        output='screen')
    return [node, play]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('bag', description='rosbag2 folder (sqlite3 or mcap) to play'),
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='image topic recorded in the bag'),
        DeclareLaunchArgument('rate', default_value='1.0',
                              description='playback rate; lower it when the model is slower '
                              'than the camera and every frame must be segmented'),
        DeclareLaunchArgument('model', default_value='',
                              description="registry model; '' = from the params file"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from "
                              'the params file'),
        DeclareLaunchArgument('params_file', default_value=_share('config', 'segmentation.yaml'),
                              description='ROS params file for the node'),
        DeclareLaunchArgument('fastdds_profile',
                              default_value=_share('config', 'fastdds_large_images.xml'),
                              description='Fast DDS profile with a large shared-memory segment'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=launch_setup),
    ])
