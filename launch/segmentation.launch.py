"""Launch one segmentation node on one camera.

    ros2 launch evit_ros segmentation.launch.py camera:=/camera/image_raw namespace:=front \
        model:=b0-cityscapes backend:=auto preset:=b0-cityscapes use_sim_time:=false

Parameters come from ``params_file`` (default: the installed config/segmentation.yaml),
then the model's ``preset`` when given, then the ``model``/``backend``/``use_sim_time``
arguments when not empty: later sources win. The Fast DDS profile for large images is set
for the node (and anything else this launch starts).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'evit_ros'
EXECUTABLE = 'segmentation_node'


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)
    overrides = {
        'model': value('model'),
        'backend': value('backend'),
        'use_sim_time': value('use_sim_time').lower() in ('true', '1', 'yes'),
    }
    parameters = [value('params_file')]
    if value('preset'):
        parameters.append(_share('config', 'presets', value('preset') + '.yaml'))
    parameters.append({name: v for name, v in overrides.items() if v != ''})
    return [Node(
        package=PACKAGE, executable=EXECUTABLE, name='segmentation_node',
        namespace=value('namespace'), parameters=parameters,
        remappings=[('~/image', value('camera'))], output='screen', emulate_tty=True)]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='sensor_msgs/Image topic to segment (for '
                              'input_transport compressed, its /compressed sibling is used)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node, e.g. the camera name'),
        DeclareLaunchArgument('model', default_value='',
                              description="registry model, e.g. b0-cityscapes; '' = from "
                              'the params file / preset'),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from "
                              'the params file'),
        DeclareLaunchArgument('preset', default_value='',
                              description='model preset from config/presets, e.g. '
                              'b0-cityscapes'),
        DeclareLaunchArgument('params_file', default_value=_share('config', 'segmentation.yaml'),
                              description='ROS params file for the node'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='true when replaying a bag with --clock'),
        DeclareLaunchArgument('fastdds_profile',
                              default_value=_share('config', 'fastdds_large_images.xml'),
                              description='Fast DDS profile with a large shared-memory segment'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=launch_setup),
    ])
