"""Label mappings users bring in a file (YAML or CSV), and label-format selection by name.

YAML::

    classes: [road, vehicle, person]   # evaluation classes, in evaluation-id order
    ground_truth:                      # label pixel value -> evaluation id; others ignored
      7: 0
      26: 1
      24: 2
    prediction:                        # model class id -> evaluation id (optional;
      0: 0                             # omitted: the model predicts evaluation ids)
      13: 1
      11: 2

CSV (header required; ``kind`` is ``ground_truth`` or ``prediction``; the class name of an
evaluation id is taken from the first row that gives one)::

    kind,source_id,eval_id,class_name
    ground_truth,7,0,road
    prediction,0,0,
"""

import csv
from pathlib import Path
from typing import Dict, Optional

from evit_ros.eval.labels import IGNORE, LabelMapping, lookup_table, MAPPINGS

KINDS = ('ground_truth', 'prediction')


class MappingError(ValueError):
    """A mapping file or label-format name that cannot be used; the message says why."""


def _ids(table, path, kind) -> Dict[int, int]:
    if not isinstance(table, dict):
        raise MappingError(f'{path}: {kind} must map source ids to evaluation ids')
    out = {}
    for src, dst in table.items():
        try:
            src, dst = int(src), int(dst)
        except (TypeError, ValueError):
            raise MappingError(f'{path}: {kind} entry {src!r}: {dst!r} is not integer '
                               f'id: id') from None
        if not 0 <= src <= 255 or not 0 <= dst < IGNORE:
            raise MappingError(f'{path}: {kind} entry {src}: {dst} out of range (source '
                               f'0..255, evaluation 0..{IGNORE - 1})')
        out[src] = dst
    return out


def _from_yaml(path: Path):
    import yaml
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MappingError(f'{path}: not valid YAML ({str(exc).splitlines()[0]})') from None
    if not isinstance(data, dict) or 'ground_truth' not in data:
        raise MappingError(f'{path}: expected keys classes, ground_truth and optionally '
                           f'prediction')
    classes = data.get('classes')
    if classes is not None and (not isinstance(classes, list) or not classes):
        raise MappingError(f'{path}: classes must be a non-empty list of names')
    gt = _ids(data['ground_truth'], path, 'ground_truth')
    pred = _ids(data['prediction'], path, 'prediction') if data.get('prediction') else None
    return [str(c) for c in classes] if classes else None, gt, pred


def _from_csv(path: Path):
    tables = {kind: {} for kind in KINDS}
    names: Dict[int, str] = {}
    with open(path, newline='') as handle:
        reader = csv.DictReader(handle)
        missing = {'kind', 'source_id', 'eval_id'} - set(reader.fieldnames or ())
        if missing:
            raise MappingError(f'{path}: CSV header needs kind,source_id,eval_id[,class_name]'
                               f'; missing {", ".join(sorted(missing))}')
        for line, row in enumerate(reader, start=2):
            kind = (row.get('kind') or '').strip()
            if kind not in KINDS:
                raise MappingError(f'{path}:{line}: kind {kind!r} is not ground_truth or '
                                   f'prediction')
            tables[kind][row['source_id']] = row['eval_id']
            name = (row.get('class_name') or '').strip()
            if name:
                names.setdefault(int(row['eval_id']), name)
    gt = _ids(tables['ground_truth'], path, 'ground_truth')
    pred = _ids(tables['prediction'], path, 'prediction') if tables['prediction'] else None
    classes = None
    if names:
        count = max(list(gt.values()) + list((pred or {}).values()) + list(names)) + 1
        classes = [names.get(i, f'class{i}') for i in range(count)]
    return classes, gt, pred


def load_mapping(path) -> LabelMapping:
    """Read a user mapping file (``.yaml``/``.yml`` or ``.csv``) into a :class:`LabelMapping`.

    :raises MappingError: for a missing, malformed or inconsistent file.
    """
    path = Path(path)
    if not path.is_file():
        raise MappingError(f'mapping file {path} does not exist')
    if path.suffix.lower() in ('.yaml', '.yml'):
        classes, gt, pred = _from_yaml(path)
    elif path.suffix.lower() == '.csv':
        classes, gt, pred = _from_csv(path)
    else:
        raise MappingError(f'mapping file {path} must end in .yaml, .yml or .csv')
    if not gt:
        raise MappingError(f'{path}: ground_truth maps no ids')
    if classes is not None:
        used = max(list(gt.values()) + list((pred or {}).values()))
        if used >= len(classes):
            raise MappingError(f'{path}: evaluation id {used} but only {len(classes)} '
                               f'classes are named')
    return LabelMapping(f'file:{path.name}', tuple(classes) if classes else None,
                        gt_table=tuple(int(v) for v in lookup_table(gt)),
                        pred_table=tuple(int(v) for v in lookup_table(pred)) if pred else None)


def resolve_mapping(label_format: Optional[str], mapping_file=None) -> LabelMapping:
    """Return the mapping named ``label_format``, or the one in ``mapping_file``.

    :raises MappingError: naming the valid formats.
    """
    if mapping_file:
        return load_mapping(mapping_file)
    name = (label_format or 'trainid').strip().lower()
    if name not in MAPPINGS:
        raise MappingError(f'unknown label format {label_format!r}; choose one of '
                           f'{", ".join(MAPPINGS)} or give --mapping FILE')
    return MAPPINGS[name]
