"""Launch ONE segmentation node for a whole camera rig: one model, batched over the cameras.

    ros2 launch evit_ros multi_camera.launch.py cameras:=front,left,right image:=image_raw

The node gets the ``cameras`` parameter ``['/front/image_raw', '/left/image_raw',
'/right/image_raw']``; camera ``front`` (the last part of its topic's namespace) is published
on ``/segmentation_node/front/label_map`` and the other per-camera outputs, its camera info is
read from ``/front/camera_info``. An entry with a slash inside (``/robot/front/image_raw``) is
taken as the full image topic. Parameters: the ``preset``, then your ``params_file``, then
the arguments (later wins); the Fast DDS profile as in segmentation.launch.py.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'evit_ros'
EXECUTABLE = 'segmentation_node'


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def camera_topics(text, image):
    """Return the image topics of ``front,left`` / ``[front, left]`` / full topic names."""
    topics = []
    for entry in text.strip('[]').split(','):
        name = entry.strip(" '\"").strip('/')
        if name:
            topics.append('/' + (name if '/' in name else f"{name}/{image.strip('/')}"))
    return topics


def default_profile():
    """Return the Fast DDS profile the user exported, else the large-image one."""
    ours = _share('config', 'fastdds_large_images.xml')
    return EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', default_value=EnvironmentVariable(
        'FASTRTPS_DEFAULT_PROFILES_FILE', default_value=ours))


def launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)
    parameters = []
    if value('preset'):
        parameters.append(_share('config', 'presets', value('preset') + '.yaml'))
    if value('params_file'):
        parameters.append(value('params_file'))
    overrides = {
        'cameras': camera_topics(value('cameras'), value('image')),
        'model': value('model'),
        'backend': value('backend'),
        'use_sim_time': value('use_sim_time').lower() in ('true', '1', 'yes'),
    }
    parameters.append({name: v for name, v in overrides.items() if v != ''})
    return [Node(
        package=PACKAGE, executable=EXECUTABLE, name='segmentation_node',
        namespace=value('namespace'), parameters=parameters, output='screen',
        emulate_tty=True)]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('cameras', default_value='front,rear',
                              description='comma-separated camera namespaces (or full image '
                              'topics)'),
        DeclareLaunchArgument('image', default_value='image_raw',
                              description='image topic inside each camera namespace'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node'),
        DeclareLaunchArgument('preset', default_value='',
                              description='model preset from config/presets, e.g. '
                              'b0-cityscapes; loaded before params_file'),
        DeclareLaunchArgument('params_file', default_value='',
                              description="your ROS params file; its values win over the "
                              "preset's; '' = none (the node's defaults)"),
        DeclareLaunchArgument('model', default_value='',
                              description="registry model; '' = from the preset / params file"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from "
                              'the preset / params file'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='true when replaying a bag with --clock'),
        DeclareLaunchArgument('fastdds_profile', default_value=default_profile(),
                              description='Fast DDS profile; default: yours when '
                              'FASTDDS_DEFAULT_PROFILES_FILE is set, else the large-image one'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=launch_setup),
    ])
