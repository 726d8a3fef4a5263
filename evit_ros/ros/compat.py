"""ROS 2 distribution differences, detected by the API present rather than by name.

Kilted is what this package is tested with here; Humble and Jazzy are supported by these
checks. Each check looks at the installed rclpy when it is called, so a test can hide the
newer API and exercise the fallback.
"""

from typing import Callable, List


def has_post_set_parameters_callback(node) -> bool:
    """Whether rclpy offers ``add_post_set_parameters_callback`` (Iron and later)."""
    return callable(getattr(node, 'add_post_set_parameters_callback', None))


def on_parameters_set(node, validate: Callable, apply: Callable[[List], None]) -> str:
    """Register ``validate`` (returns ``SetParametersResult``) and ``apply`` (after success).

    With the post-set callback (Iron+) ``apply`` runs once the values are set; on Humble it
    runs inside the validating callback when the result is successful (the values are set
    right after, with nothing in between that can fail).

    :returns: ``'post-set callback'`` or ``'fallback'``: which path was taken.
    """
    if has_post_set_parameters_callback(node):
        node.add_on_set_parameters_callback(validate)
        node.add_post_set_parameters_callback(apply)
        return 'post-set callback'

    def validate_then_apply(parameters):
        result = validate(parameters)
        if result.successful:
            apply(parameters)
        return result
    node.add_on_set_parameters_callback(validate_then_apply)
    return 'fallback'
