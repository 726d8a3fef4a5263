"""Launch one segmentation node per camera, each in the camera's namespace.

    ros2 launch evit_ros multi_camera.launch.py cameras:=front,left,right image:=image_raw

For camera ``front`` the node ``/front/segmentation_node`` segments ``/front/image_raw`` and
publishes ``/front/segmentation_node/label_map`` and the other outputs. The nodes share the
machine's GPU; lower ``network_height``/``network_width`` in the params file if they cannot
keep up together.
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


def camera_names(text):
    """Split ``front,rear`` or ``[front, rear]`` into namespaces."""
    return [name.strip(" '\"/") for name in text.strip('[]').split(',') if name.strip(" '\"")]


def launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)
    overrides = {
        'model': value('model'),
        'backend': value('backend'),
        'use_sim_time': value('use_sim_time').lower() in ('true', '1', 'yes'),
    }
    parameters = [value('params_file'),
                  {name: v for name, v in overrides.items() if v != ''}]
    image = value('image').strip('/')
    return [Node(
        package=PACKAGE, executable=EXECUTABLE, name='segmentation_node', namespace=camera,
        parameters=parameters, remappings=[('~/image', f'/{camera}/{image}')],
        output='screen', emulate_tty=True) for camera in camera_names(value('cameras'))]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('cameras', default_value='front,rear',
                              description='comma-separated camera namespaces'),
        DeclareLaunchArgument('image', default_value='image_raw',
                              description='image topic inside each camera namespace'),
        DeclareLaunchArgument('model', default_value='',
                              description="registry model; '' = from the params file"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from "
                              'the params file'),
        DeclareLaunchArgument('params_file', default_value=_share('config', 'segmentation.yaml'),
                              description='ROS params file shared by every node'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='true when replaying a bag with --clock'),
        DeclareLaunchArgument('fastdds_profile',
                              default_value=_share('config', 'fastdds_large_images.xml'),
                              description='Fast DDS profile with a large shared-memory segment'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=launch_setup),
    ])
