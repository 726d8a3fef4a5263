"""Launch one segmentation node on one camera.

    ros2 launch evit_ros segmentation.launch.py camera:=/camera/image_raw namespace:=front \
        preset:=b0-cityscapes params_file:=my_robot.yaml backend:=auto

Parameters are loaded in this order, later sources winning: the model's ``preset`` (from
config/presets), then your ``params_file``, then the ``model``/``backend``/``use_sim_time``
arguments when not empty. The Fast DDS profile for large images is set for the node (and
anything else this launch starts) unless ``FASTDDS_DEFAULT_PROFILES_FILE`` (or the older
``FASTRTPS_DEFAULT_PROFILES_FILE``) is already set: your profile is kept.
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


def parameter_sources(value):
    """Return the node's parameters: preset, then the user's file, then the arguments."""
    sources = []
    if value('preset'):
        sources.append(_share('config', 'presets', value('preset') + '.yaml'))
    if value('params_file'):
        sources.append(value('params_file'))
    overrides = {
        'model': value('model'),
        'backend': value('backend'),
        'use_sim_time': value('use_sim_time').lower() in ('true', '1', 'yes'),
    }
    sources.append({name: v for name, v in overrides.items() if v != ''})
    return sources


def default_profile():
    """Return the Fast DDS profile the user exported, else the large-image one."""
    ours = _share('config', 'fastdds_large_images.xml')
    return EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', default_value=EnvironmentVariable(
        'FASTRTPS_DEFAULT_PROFILES_FILE', default_value=ours))


def launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)
    return [Node(
        package=PACKAGE, executable=EXECUTABLE, name='segmentation_node',
        namespace=value('namespace'), parameters=parameter_sources(value),
        remappings=[('~/image', value('camera'))], output='screen', emulate_tty=True)]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='sensor_msgs/Image topic to segment (for '
                              'input_transport compressed, its /compressed sibling is used)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node, e.g. the camera name'),
        DeclareLaunchArgument('preset', default_value='',
                              description='model preset from config/presets, e.g. '
                              'b0-cityscapes; loaded before params_file'),
        DeclareLaunchArgument('params_file', default_value='',
                              description="your ROS params file; its values win over the "
                              "preset's; '' = none (the node's defaults)"),
        DeclareLaunchArgument('model', default_value='',
                              description="registry model, e.g. b0-cityscapes; '' = from "
                              'the preset / params file'),
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
