"""The artifact check flags of ``export`` and ``build-engine``.

``--check-data`` / ``--check-frames`` / ``--force``: labelled CamVid frames an artifact is
scored on before it is written.
"""

from evit_ros.cli import CommandError


def add_check_args(parser, force_help: str) -> None:
    """Add ``--check-data DIR``, ``--check-frames N`` and ``--force`` to ``parser``."""
    parser.add_argument('--check-data', metavar='DIR',
                        help='labelled CamVid val data (DIR/val + DIR/valannot) to check the '
                             "artifact's mIoU against fp32 on; without it mIoU is not checked")
    parser.add_argument('--check-frames', type=int, metavar='N',
                        help='check on N frames of --check-data spread evenly (default all)')
    parser.add_argument('--force', action='store_true', help=force_help)


def labelled_checks(args, entry, image=None):
    """Return the :class:`~evit_ros.runtime.artifact.ArtifactChecks` the flags ask for.

    ``None`` when they ask for nothing beyond the default checks (no frames, no ``--force``,
    no ``image``).

    :param entry: the model's registry entry (CamVid is scored through Cityscapes classes).
    :param image: an RGB frame for the finiteness check, or ``None``.
    :raises CommandError: one line for a bad ``--check-frames``, a model of other classes,
        or a folder that is not CamVid val data.
    """
    if args.check_frames is not None and args.check_frames < 1:
        raise CommandError(f'--check-frames must be >= 1, got {args.check_frames}')
    labelled = None
    if args.check_data:
        if entry.dataset.lower() != 'cityscapes':
            raise CommandError(f'--check-data scores on CamVid through the Cityscapes '
                               f'classes; {entry.name} predicts {entry.dataset} classes')
        from evit_ros.eval.labelled_images import LabelledDataError, LabelledImages
        try:
            labelled = LabelledImages.camvid(args.check_data, frames=args.check_frames)
        except LabelledDataError as exc:
            raise CommandError(str(exc)) from None
    if labelled is None and not args.force and image is None:
        return None
    from evit_ros.runtime.artifact import ArtifactChecks
    return ArtifactChecks(labelled=labelled, force=args.force, image=image)
