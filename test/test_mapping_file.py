"""User mapping files (YAML / CSV) and label-format names."""

import numpy as np
import pytest

from evit_ros.eval.labels import IGNORE, MAPPINGS
from evit_ros.eval.mapping_file import load_mapping, MappingError, resolve_mapping

YAML = """\
classes: [road, vehicle, person]
ground_truth: {7: 0, 26: 1, 27: 1, 24: 2}
prediction: {0: 0, 13: 1, 14: 1, 11: 2}
"""

CSV = """\
kind,source_id,eval_id,class_name
ground_truth,7,0,road
ground_truth,26,1,vehicle
ground_truth,27,1,
ground_truth,24,2,person
prediction,0,0,
prediction,13,1,
prediction,14,1,
prediction,11,2,
"""


@pytest.mark.parametrize('name,text', [('map.yaml', YAML), ('map.csv', CSV)])
def test_mapping_file_maps_ground_truth_and_predictions(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    mapping = load_mapping(path)
    assert mapping.classes(['ignored model names']) == ('road', 'vehicle', 'person')
    gt = np.array([[7, 26, 27, 24, 0, 255]], np.uint8)
    assert mapping.ground_truth(gt).tolist() == [[0, 1, 1, 2, IGNORE, IGNORE]]
    pred = np.array([[0, 13, 14, 11, 5]], np.uint8)
    assert mapping.prediction(pred).tolist() == [[0, 1, 1, 2, IGNORE]]
    assert resolve_mapping('camvid', path) is not MAPPINGS['camvid']


def test_mapping_without_prediction_table_keeps_model_ids(tmp_path):
    path = tmp_path / 'm.yml'
    path.write_text('ground_truth:\n  1: 0\n  2: 1\n')
    mapping = load_mapping(path)
    assert mapping.prediction(np.array([3], np.uint8)).tolist() == [3]
    assert mapping.classes(('a', 'b', 'c')) == ('a', 'b', 'c')


@pytest.mark.parametrize('name,text,message', [
    ('m.yaml', 'classes: [a]\nground_truth: {1: 3}\n', 'only 1 classes'),
    ('m.yaml', 'ground_truth: {x: 1}\n', 'not integer'),
    ('m.yaml', 'ground_truth: {300: 1}\n', 'out of range'),
    ('m.yaml', 'classes: a\n', 'expected keys'),
    ('m.yaml', 'ground_truth: [1, 2\n', 'not valid YAML'),
    ('m.csv', 'a,b\n1,2\n', 'CSV header'),
    ('m.csv', 'kind,source_id,eval_id\nlabel,1,2\n', "kind 'label'"),
    ('m.txt', 'x', '.yaml, .yml or .csv'),
])
def test_bad_mapping_files_say_what_is_wrong(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MappingError, match=message):
        load_mapping(path)


def test_label_format_names():
    assert resolve_mapping(None) is MAPPINGS['trainid']
    assert resolve_mapping('CamVid') is MAPPINGS['camvid']
    with pytest.raises(MappingError, match='cityscapes, trainid, ade20k, camvid'):
        resolve_mapping('voc')
    with pytest.raises(MappingError, match='does not exist'):
        load_mapping('/nonexistent/map.yaml')
