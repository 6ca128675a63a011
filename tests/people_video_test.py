"""Several people in a video and in images, keypoint files, camera-space roots.

A synthetic video of two people (two walking clips side by side, known 2D
joints, face points and boxes) runs through `--mode=predict` with a
two-person boxes file and with COCO-17 and 16-joint keypoint files written
from the truth, the people listed in a different order from frame to frame:
every frame has both, ids never swap, the 2D comes from the file unsmoothed.
The tiny checkpoints check this plumbing; whether tracking without a file
finds both people, and whether the root's depth is right, needs the trained
demo (`demo_workdir`, opt-in like predict_video_test's tracking test).
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.geometry import coco17
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.inference import predict
from deepskeleton_jax.inference import tracking

J = skeleton.JOINT_INDEX
T = 16
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def pair(synthetic_video):
  clips = [synthetic_video.render_clip(num_frames=T, height=192, width=192, seed=s)
           for s in (0, 1)]
  return synthetic_video.side_by_side(clips)


@pytest.fixture(scope='module')
def pair_file(pair, synthetic_video, tmp_path_factory):
  path = tmp_path_factory.mktemp('pair') / 'pair.mp4'
  synthetic_video.write_video(str(path), pair.frames, pair.fps)
  return path


def _predict(pipe, out_dir, **fields):
  fields.setdefault('min_confidence', -1.0)  # untrained tiny hourglass: keep every crop
  return predict.predict(pipe.config(output_dir=str(out_dir), **fields), pipe.workdir)


def _orders(t):
  return (0, 1) if t % 3 else (1, 0)  # the file lists the people in varying order


def _check_two_people(result, out_json, ids):
  """Both people on every frame, each id always on its own side (left id first)."""
  assert list(result['people']) == sorted(ids)
  for person_id, side in zip(ids, (0, 1)):
    person = result['people'][person_id]
    assert person.present.all()
    x = np.nanmean(person.joints_2d_raw[..., 0], axis=1)
    assert np.all((x > 192) == bool(side)), (person_id, x)  # never swapped
  saved = json.loads(out_json.read_text())
  assert all(sorted(p['id'] for p in f['people']) == sorted(ids) for f in saved['frames'])
  return saved


def test_two_person_boxes_file(tiny_pipeline, pair, pair_file, tmp_path):
  rows = ['frame id x0 y0 x1 y1']
  for t in range(T):
    for k in _orders(t):
      rows.append(f'{t},{(5, 2)[k]},' + ','.join(f'{v:.4f}' for v in pair.boxes[k, t]))
  (tmp_path / 'boxes.csv').write_text('\n'.join(rows))
  result = _predict(tiny_pipeline, tmp_path / 'out', video=str(pair_file),
                    boxes_file=str(tmp_path / 'boxes.csv'))
  saved = json.loads((tmp_path / 'out' / 'pair.json').read_text())
  assert all(sorted(p['id'] for p in f['people']) == [2, 5] for f in saved['frames'])
  for person_id, k in ((5, 0), (2, 1)):  # the file's ids and boxes, whatever the order
    np.testing.assert_allclose(result['people'][person_id].boxes, pair.boxes[k], atol=1e-3)
  npz = np.load(tmp_path / 'out' / 'pair_poses.npz')
  assert npz['ids'].tolist() == [2, 5] and npz['root_camera_mm'].shape == (2, T, 3)
  depth = npz['root_camera_mm'][..., 2]  # untrained poses: NaN where fitted behind the camera
  assert np.all(depth[np.isfinite(depth)] > 0) and np.isfinite(depth).any()
  assert result['crops_run'] == 2 * T  # 32 crops: 4 full batches


def _coco_entries(pair, synthetic_video):
  """COCO-17 results from the truth: pixel indices (ours - 0.5), scores 0.9, no track_id."""
  kp = np.concatenate([synthetic_video.coco17_2d(pair.joints_2d, pair.face_2d) - 0.5,
                       np.full(pair.joints_2d.shape[:2] + (17, 1), 0.9)], axis=-1)
  return [{'image_id': t, 'category_id': 1, 'keypoints': kp[k, t].ravel().tolist(),
           'score': 0.9, 'bbox': [0, 0, 10, 10]} for t in range(T) for k in _orders(t)]


def test_two_person_coco_keypoints_file(tiny_pipeline, pair, pair_file, synthetic_video,
                                        tmp_path):
  (tmp_path / 'kp.json').write_text(json.dumps(_coco_entries(pair, synthetic_video)))
  result = _predict(tiny_pipeline, tmp_path / 'out', video=str(pair_file), smoothing='none',
                    keypoints_file=str(tmp_path / 'kp.json'), min_confidence=1e9)
  # min_confidence is for detections: a keypoints file's people are all there.
  first = result['people'][0]
  left, right = (0, 1) if np.nanmean(first.joints_2d_raw[..., 0]) < 192 else (1, 0)
  saved = _check_two_people(result, tmp_path / 'out' / 'pair.json', (left, right))
  assert saved['joints_2d_source'] == 'keypoints_file' and saved['box_source'] == 'keypoints_file'
  for person_id, k in ((left, 0), (right, 1)):
    person = result['people'][person_id]
    np.testing.assert_allclose(person.joints_2d, person.joints_2d_raw)  # smoothing off
    for ours in coco17.DIRECT:  # the same joints, from the file unchanged
      np.testing.assert_allclose(person.joints_2d[:, ours], pair.joints_2d[k, :, ours],
                                 atol=1e-3)
    # The pelvis: midpoint of the projected hips (the projected midpoint is 0.1 px away).
    np.testing.assert_allclose(person.joints_2d[:, J['pelvis']],
                               pair.joints_2d[k][:, [J['l_hip'], J['r_hip']]].mean(1), atol=1e-3)
    np.testing.assert_allclose(person.joints_2d[:, J['pelvis']],
                               pair.joints_2d[k, :, J['pelvis']], atol=0.2)
    np.testing.assert_allclose(person.confidence[:, J['r_knee']], 0.9, rtol=1e-6)
    head_len = np.linalg.norm(pair.joints_2d[k, :, J['head_top']]
                              - pair.joints_2d[k, :, J['upper_neck']], axis=-1)
    head_err = np.linalg.norm(person.joints_2d[:, J['head_top']]
                              - pair.joints_2d[k, :, J['head_top']], axis=-1)
    assert np.median(head_err / head_len) < 0.4
    box_centre = (person.boxes[:, :2] + person.boxes[:, 2:]) / 2
    true_centre = (pair.boxes[k, :, :2] + pair.boxes[k, :, 2:]) / 2
    assert np.max(np.abs(box_centre - true_centre)) < 0.1 * (pair.boxes[k, 0, 2]
                                                             - pair.boxes[k, 0, 0])


def test_two_person_joints_file_keeps_track_ids(tiny_pipeline, pair, pair_file, tmp_path):
  entries = []
  for t in range(T):
    for k in _orders(t):
      entries.append({'frame': t, 'joints': pair.joints_2d[k, t].tolist(),
                      'track_id': (7, 3)[k]})
  (tmp_path / 'kp.json').write_text(json.dumps(entries))
  result = _predict(tiny_pipeline, tmp_path / 'out', video=str(pair_file), smoothing='none',
                    keypoints_file=str(tmp_path / 'kp.json'))
  _check_two_people(result, tmp_path / 'out' / 'pair.json', (7, 3))
  for person_id, k in ((7, 0), (3, 1)):
    np.testing.assert_allclose(result['people'][person_id].joints_2d, pair.joints_2d[k],
                               atol=1e-4)


def test_run_py_with_a_coco_keypoints_file_writes_each_tracked_person(
    tiny_pipeline, pair, pair_file, synthetic_video, tmp_path):
  """The join as a user meets it: run.py's flags, a COCO-17 file with track ids, BVH out."""
  entries = _coco_entries(pair, synthetic_video)
  for entry in entries:  # _coco_entries lists person 0 then 1, or 1 then 0, per frame
    k = 0 if np.mean(entry['keypoints'][0::3]) < 192 else 1
    entry['track_id'] = (7, 3)[k]
  (tmp_path / 'kp.json').write_text(json.dumps(entries))
  out = tmp_path / 'out'
  run = subprocess.run(
      [sys.executable, str(REPO / 'run.py'), '--mode=predict',
       '--config=' + str(REPO / 'configs' / 'tiny.py'), f'--workdir={tiny_pipeline.workdir}',
       f'--config.data.data_dir={tiny_pipeline.data_dir}', f'--config.predict.video={pair_file}',
       f'--config.predict.keypoints_file={tmp_path / "kp.json"}', '--config.predict.bvh=True',
       '--config.predict.smoothing=none', f'--config.predict.output_dir={out}'],
      capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
  assert run.returncode == 0, run.stderr[-3000:]
  frames = json.loads((out / 'pair.json').read_text())['frames']
  assert len(frames) == T
  for t, frame in enumerate(frames):
    people = {p['id']: p for p in frame['people']}
    assert sorted(people) == [3, 7], t
    for person_id, k in ((7, 0), (3, 1)):  # the file's 2D, back in our pixel convention
      got = np.asarray(people[person_id]['joints_2d'], np.float64)
      for ours in coco17.DIRECT:
        np.testing.assert_allclose(got[ours], pair.joints_2d[k, t, ours], atol=1e-2)
  bvh_lib = registry.load_module('bvh_mocap', 'bvh')
  for person_id in (7, 3):
    motion = bvh_lib.load(out / f'pair_{person_id}.bvh')
    assert bvh_lib.forward_kinematics(motion).shape[0] == T


def test_max_people_two_without_a_file(tiny_pipeline, pair_file, tmp_path):
  """Plumbing on the tiny model: at most two people a frame, distinct ids."""
  result = _predict(tiny_pipeline, tmp_path, video=str(pair_file), max_people=2)
  frames = json.loads((tmp_path / 'pair.json').read_text())['frames']
  counts = [len(f['people']) for f in frames]
  assert max(counts) == 2 and min(counts) >= 1, counts
  assert all(len({p['id'] for p in f['people']}) == len(f['people']) for f in frames)


def test_images_with_several_people(tiny_pipeline, pair, tmp_path):
  import cv2  # pylint: disable=g-import-not-at-top
  for name, t in (('a.png', 0), ('b.png', 5)):
    cv2.imwrite(str(tmp_path / name), pair.frames[t][..., ::-1])
  entries = [{'image': 'b.png', 'id': 1, 'box': pair.boxes[1, 5].tolist()},
             {'image': 'a.png', 'id': 0, 'box': pair.boxes[0, 0].tolist()},
             {'image': 'a.png', 'id': 9, 'box': pair.boxes[1, 0].tolist()}]
  (tmp_path / 'boxes.json').write_text(json.dumps(entries))
  records = _predict(tiny_pipeline, tmp_path / 'out', boxes_file=str(tmp_path / 'boxes.json'),
                     images=f'{tmp_path / "a.png"},{tmp_path / "b.png"}')
  assert [[p['id'] for p in r['people']] for r in records] == [[0, 9], [1]]
  np.testing.assert_allclose(records[0]['people'][1]['box'], pair.boxes[1, 0], atol=1e-3)
  assert 'joints_3d_mm' not in records[0]  # with a file: only "people"
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
      'a.json', 'a_0.png', 'a_9.png', 'b.json', 'b_1.png']


def _demo_config(**predict_fields):
  config = demo.get_config()
  config.predict.update(predict_fields)
  return config_lib.finalize(config)


def _inside(box, point):
  return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_tracking_finds_both_people(demo_workdir, synthetic_video, tmp_path):
  """max_people=2, no file: both people followed on most frames, no id on both.

  Three two-person videos (seeds 0+1, 2+3, 4+5, all that were tried), 16
  frames each. A person counts as found on a frame when a predicted box's
  centre lies inside its true box. Measured with the demo (seed 0 workdir):
  found on 16+16, 15+16 and 16+15 frames, ids 0 and 1 only. Boxes are
  tighter than the truth (the demo's 2D underestimates a person's extent; on
  seeds 4+5 the search started the right person from a window on its legs):
  IoU >= 0.5 with the true box on 16+9, 15+8 and 16+0 frames, which is why
  IoU is not asserted.
  """
  for seeds in ((0, 1), (2, 3), (4, 5)):
    pair = synthetic_video.side_by_side([synthetic_video.render_clip(
        num_frames=T, height=192, width=192, seed=s) for s in seeds])
    path = tmp_path / f'pair{seeds[0]}.mp4'
    synthetic_video.write_video(str(path), pair.frames, pair.fps)
    result = predict.predict(_demo_config(video=str(path), max_people=2,
                                          output_dir=str(tmp_path)), demo_workdir)
    found, tight = np.zeros((2, T), bool), np.zeros((2, T), bool)
    for person in result['people'].values():
      on = set()
      for t in np.flatnonzero(person.present):
        centre = (person.boxes[t, :2] + person.boxes[t, 2:]) / 2
        for k in range(2):
          if _inside(pair.boxes[k, t], centre):
            found[k, t], tight[k, t] = True, tracking.iou(person.boxes[t], pair.boxes[k, t]) >= 0.5
            on.add(k)
      assert len(on) <= 1, (seeds, person.id)  # an id follows one person only
    print(f'seeds {seeds}: each person found on {found.sum(1).tolist()} of {T} frames, '
          f'IoU >= 0.5 on {tight.sum(1).tolist()}, ids {list(result["people"])}')
    assert np.all(found.mean(1) > 0.5), (seeds, found)


def test_root_depth_with_true_intrinsics(demo_workdir, synthetic_video, tmp_path):
  """With the synthetic clip's true camera, the root's depth is right when the pose's size is.

  The synthetic clip (seed 0, tests/conftest.py), its true boxes and
  intrinsics: the root's depth (perspective fit of the chosen hypothesis to
  the hourglass' 2D) within 10% of the truth on most frames (measured 87%,
  raw and smoothed; median ratio 1.02). One view fixes the depth only up to the person's
  size: depth / true depth follows the predicted pose's size / the true size,
  asserted within 12% on seeds 0-4 (all that were tried; measured 1.02/0.92,
  0.78/0.79, 0.84/0.78, 1.07/1.02, 1.01/1.01 in median: the demo makes the
  1.84 m and 1.95 m people of seeds 1 and 2 about 20% too small, and their
  depth 15-22% too near).
  """
  bones = np.array(skeleton.BONES)

  def size(pose):  # the sum of the 15 bone lengths
    return np.linalg.norm(pose[..., bones[:, 0], :] - pose[..., bones[:, 1], :], axis=-1).sum(-1)
  for seed in range(5):
    clip = synthetic_video.render_clip(num_frames=30, seed=seed)
    path = tmp_path / f'walk{seed}.mp4'
    synthetic_video.write_video(str(path), clip.frames, clip.fps)
    boxes = tmp_path / f'boxes{seed}.csv'
    boxes.write_text('\n'.join(' '.join(map(str, b)) for b in clip.boxes))
    result = predict.predict(_demo_config(
        video=str(path), output_dir=str(tmp_path / 'out'), boxes_file=str(boxes),
        intrinsics=' '.join(str(v) for v in clip.intrinsics[0])), demo_workdir)
    person = result['people'][0]
    depth = person.root_camera_mm_raw[:, 2] / clip.joints_3d[:, J['thorax'], 2]
    scale = size(person.joints_3d_raw) / size(clip.joints_3d)
    smoothed = person.root_camera_mm[:, 2] / clip.joints_3d[:, J['thorax'], 2]
    print(f'seed {seed}: depth within 10% on {np.mean(np.abs(depth - 1) < 0.1):.0%} of the '
          f'frames ({np.mean(np.abs(smoothed - 1) < 0.1):.0%} smoothed); median depth ratio '
          f'{np.median(depth):.3f}, size ratio {np.median(scale):.3f}')
    if seed == 0:
      assert np.mean(np.abs(depth - 1) < 0.1) > 0.7 and np.mean(np.abs(smoothed - 1) < 0.1) > 0.7
    assert np.median(depth) / np.median(scale) == pytest.approx(1.0, abs=0.12), seed
