"""Tests of boxes and keypoints files with several people (inference/people_io.py)."""

import json

import numpy as np
import pytest

from deepskeleton_jax import errors
from deepskeleton_jax.geometry import coco17
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import people_io

VIDEO = people_io.Index([(100, 200)] * 3)  # 3 frames of 200x100


def _ids_boxes(people):
  return [{p.id: p.box.tolist() for p in frame} for frame in people]


def test_csv_rows_with_ids(tmp_path):
  path = tmp_path / 'b.csv'
  path.write_text('frame,id,x0,y0,x1,y1\n0,7,10,10,50,90\n0 3 100 10 140 90\n'
                  '2,7,12,10,52,90  # frame 1 has nobody\n')
  assert _ids_boxes(people_io.read_boxes_file(str(path), VIDEO)) == [
      {7: [10, 10, 50, 90], 3: [100, 10, 140, 90]}, {}, {7: [12, 10, 52, 90]}]


def test_json_entries_and_own_output(tmp_path):
  entries = [{'frame': 2, 'id': 1, 'box': [1, 2, 30, 40]},
             {'frame': 0, 'id': 0, 'box': [5, 5, 25, 45]}]
  (tmp_path / 'b.json').write_text(json.dumps(entries))
  want = [{0: [5, 5, 25, 45]}, {}, {1: [1, 2, 30, 40]}]
  assert _ids_boxes(people_io.read_boxes_file(str(tmp_path / 'b.json'), VIDEO)) == want
  own = {'frames': [{'frame': i, 'people': [{'id': k, 'box': b, 'joints_2d': None}
                                            for k, b in frame.items()]}
                    for i, frame in enumerate(want)]}
  (tmp_path / 'own.json').write_text(json.dumps(own))
  assert _ids_boxes(people_io.read_boxes_file(str(tmp_path / 'own.json'), VIDEO)) == want


def test_one_box_per_frame_of_before_is_person_0(tmp_path):
  (tmp_path / 'b.csv').write_text('x0 y0 x1 y1\n10 10 50 90\nnone\n11 10 51 90\n')
  (tmp_path / 'b.json').write_text('[[10, 10, 50, 90], null, [11, 10, 51, 90]]')
  for name in ('b.csv', 'b.json'):
    assert _ids_boxes(people_io.read_boxes_file(str(tmp_path / name), VIDEO)) == [
        {0: [10, 10, 50, 90]}, {}, {0: [11, 10, 51, 90]}], name


def test_images_are_keyed_by_file_name(tmp_path):
  index = people_io.Index([(100, 200), (100, 200)], ['photos/a.jpg', 'other/b.png'])
  (tmp_path / 'b.json').write_text(json.dumps([{'image': 'b.png', 'id': 4, 'box': [0, 0, 9, 9]},
                                               {'image': 'photos/a.jpg', 'id': 0,
                                                'box': [1, 1, 9, 9]}]))
  (tmp_path / 'b.csv').write_text('b.png 4 0 0 9 9\na.jpg 0 1 1 9 9\n')
  for name in ('b.json', 'b.csv'):
    assert _ids_boxes(people_io.read_boxes_file(str(tmp_path / name), index)) == [
        {0: [1, 1, 9, 9]}, {4: [0, 0, 9, 9]}], name


def _coco_entry(frame, joints16, track_id=None, nested=False):
  """A COCO-17 entry (pixel indices: ours - 0.5) whose limbs are `joints16`."""
  kp = np.zeros((17, 3))
  kp[:, 2] = 0.8
  for ours, coco in coco17.DIRECT.items():
    kp[coco, :2] = joints16[ours] - 0.5
  kp[:5, :2] = joints16[skeleton.JOINT_INDEX['head_top']] - 0.5  # face points on the head
  entry = {'image_id': frame, 'category_id': 1, 'score': 0.9,
           'keypoints': kp.tolist() if nested else kp.ravel().tolist(), 'bbox': [0, 0, 1, 1]}
  if track_id is not None:
    entry['track_id'] = track_id
  return entry


def test_coco_keypoints_give_joints_boxes_and_tracked_ids(tmp_path):
  rng = np.random.default_rng(0)
  left = rng.uniform([20, 20], [60, 80], (16, 2))
  right = left + [100, 0]
  entries = []
  for t in range(3):  # the two people listed in a different order each frame
    pair = [_coco_entry(t, left + t, nested=True), _coco_entry(t, right - t)]
    entries += pair if t % 2 else pair[::-1]
  (tmp_path / 'k.json').write_text(json.dumps(entries))
  people = people_io.read_keypoints_file(str(tmp_path / 'k.json'), VIDEO, 1.25, 5)
  for t, frame in enumerate(people):
    by_id = {p.id: p for p in frame}
    assert set(by_id) == {0, 1}
    first = 0 if np.mean(by_id[0].joints_2d[:, 0]) < 100 else 1  # whoever frame 0 named 0
    for person, truth in ((by_id[first], left + t), (by_id[1 - first], right - t)):
      for ours in coco17.DIRECT:
        np.testing.assert_allclose(person.joints_2d[ours], truth[ours], atol=1e-4)
      np.testing.assert_allclose(person.scores[list(coco17.DIRECT)], 0.8, rtol=1e-6)
      centre = (person.box[:2] + person.box[2:]) / 2
      assert person.box[2] - person.box[0] == pytest.approx(person.box[3] - person.box[1])
      assert np.all(person.box[:2] <= person.joints_2d.min(0))
      assert np.all(person.box[2:] >= person.joints_2d.max(0)) and np.all(centre > 0)
  assert [p.id for p in people[0]] == [0, 1] and first == 1  # frame 0 listed right first


def test_track_ids_and_our_joints(tmp_path):
  joints = np.full((16, 2), 50.0) + np.arange(16)[:, None]
  entries = [{'frame': 1, 'joints': joints.tolist(), 'track_id': 9},
             {'frame': 1, 'joints': (joints + 90).tolist(), 'scores': [0.5] * 16,
              'track_id': 2}]
  (tmp_path / 'k.json').write_text(json.dumps(entries))
  people = people_io.read_keypoints_file(str(tmp_path / 'k.json'), VIDEO, 1.25, 5)
  assert people[0] == [] and people[2] == []
  by_id = {p.id: p for p in people[1]}
  np.testing.assert_allclose(by_id[9].joints_2d, joints)  # ours: no half-pixel shift
  np.testing.assert_allclose(by_id[9].scores, 1.0)
  np.testing.assert_allclose(by_id[2].scores, 0.5)


@pytest.mark.parametrize('reader,text,words', [
    ('boxes', '0 0 10 10 50 50\n5 0 10 10 50 50\n', 'frame 5: expected an integer frame'),
    ('boxes', '0 a 10 10 50 50\n', "id 'a': expected an integer"),
    ('boxes', '0 1 10 10 50 50\n0 1 12 10 52 50\n', 'person id 1 twice in one frame'),
    ('boxes', '0 1 300 10 350 50\n', 'outside the 200x100 frame'),
    ('boxes', '0 1 10 10 50\n', "expected 6 values 'frame id x0 y0 x1 y1'"),
    ('boxes', '[{"frame": 0, "box": [1, 1, 5, 5]}]', 'expected {"frame": ..., "id"'),
    ('keypoints', '[{"frame": 0, "keypoints": [1, 2, 3]}]', '51 numbers'),
    ('keypoints', '[{"keypoints": []}]', 'expected a "frame" or "image_id" key'),
    ('keypoints', '[{"frame": 0, "joints": [[1, 2]]}]', '16 [x, y] pairs'),
    ('keypoints', '[{"frame": 0, "joints": %s, "track_id": 1}, {"frame": 1, "joints": %s}]'
     % ([[1, 2]] * 16, [[1, 2]] * 16), 'some entries have a "track_id"'),
    ('keypoints', '{"frame": 0}', 'expected a JSON list'),
    ('keypoints', '[{"frame": 0, "joints": ', 'not valid JSON'),
])
def test_bad_files_fail_with_one_clear_error(tmp_path, reader, text, words):
  path = tmp_path / ('f.json' if text.lstrip()[:1] in '[{' else 'f.csv')
  path.write_text(text)
  with pytest.raises(errors.InputError) as info:
    if reader == 'boxes':
      people_io.read_boxes_file(str(path), VIDEO)
    else:
      people_io.read_keypoints_file(str(path), VIDEO, 1.25, 5)
  assert str(path) in str(info.value) and words in str(info.value), str(info.value)
