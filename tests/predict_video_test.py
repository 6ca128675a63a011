"""Tests of `--mode=predict --config.predict.video=...` (inference/predict_video.py), one person.

The tiny checkpoints (tests/conftest.py) check the plumbing: one output entry
per frame, the overlay's frame count and size, given boxes, frames without a
person, the tracking invariant, smoothing and every bad input. Whether the
tracked boxes follow the person needs a model that has learned something:
`test_tracked_boxes_follow_the_person` runs on a trained demo workdir when one
exists (DEEPSKELETON_DEMO_WORKDIR, default workdir/demo) and skips otherwise.
Several people, keypoints files and the camera-space root: people_video_test.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from configs import demo
from deepskeleton_jax import errors
from deepskeleton_jax.inference import predict
from deepskeleton_jax.inference import smoothing
from deepskeleton_jax.inference import tracking
from deepskeleton_jax.visualization import video_overlay
from deepskeleton_jax.experiment import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def clip_file(synthetic_clip, synthetic_video, tmp_path_factory):
  path = tmp_path_factory.mktemp('clip') / 'walk.mp4'
  synthetic_video.write_video(str(path), synthetic_clip.frames, synthetic_clip.fps)
  return path


def _predict(pipe, out_dir, **fields):
  fields.setdefault('min_confidence', -1.0)  # untrained tiny hourglass: keep every frame
  return predict.predict(pipe.config(output_dir=str(out_dir), **fields), pipe.workdir)


def _read_video(path):
  cap = cv2.VideoCapture(str(path))
  frames, fps = [], cap.get(cv2.CAP_PROP_FPS)
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame)
  cap.release()
  return np.stack(frames), fps


def one_person(result):
  """Per frame (boxes [T, 4], joints_2d_raw [T, 16, 2], present [T]) of a one-person run.

  With `max_people=1` a frame has at most one person, whatever its id (an
  untrained model's boxes may jump far enough to start a new id).
  """
  t = result['num_frames']
  boxes, joints = np.full((t, 4), np.nan), np.full((t, 16, 2), np.nan)
  present = np.zeros(t, bool)
  for person in result['people'].values():
    assert not np.any(present & person.present)
    present |= person.present
    boxes[person.present] = person.boxes[person.present]
    joints[person.present] = person.joints_2d_raw[person.present]
  return boxes, joints, present


def _square_box(joints, margin, h, w):
  """The tracker's box, written out again: square, margin x extent, same centre."""
  lo, hi = joints.min(0), joints.max(0)
  c = np.clip((lo + hi) / 2, 0, [w, h])
  half = max(margin * (hi - lo).max(), min(h, w) / 16) / 2
  return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])


def test_outputs_have_one_entry_per_frame(tiny_pipeline, clip_file, synthetic_clip, tmp_path):
  result = _predict(tiny_pipeline, tmp_path, video=str(clip_file), search_scales=())
  t, h, w = synthetic_clip.frames.shape[:3]
  frames, fps = _read_video(tmp_path / 'walk_overlay.mp4')
  assert frames.shape == (t, h, w + h, 3) and fps == pytest.approx(synthetic_clip.fps)
  # The left panel is the input frame (outside the drawn skeleton and box).
  assert np.median(np.abs(frames[0, :, :w].astype(int)
                          - synthetic_clip.frames[0][..., ::-1].astype(int))) < 8
  saved = json.loads((tmp_path / 'walk.json').read_text())
  assert saved['num_frames'] == t and len(saved['frames']) == t
  assert saved['fps'] == pytest.approx(25.0) and saved['frame_size'] == [w, h]
  assert all(len(f['people']) == 1 for f in saved['frames'])  # min_confidence -1
  person = saved['frames'][3]['people'][0]
  assert np.asarray(person['joints_2d']).shape == (16, 2) and len(person['box']) == 4
  assert np.asarray(person['hypotheses']).shape == (2, 16, 3)
  assert np.asarray(person['pose_3d']).shape == (16, 3)
  # null where the (untrained) pose fits behind the camera
  assert all(p['root_camera_mm'] is None or len(p['root_camera_mm']) == 3
             for f in saved['frames'] for p in f['people'])
  assert 0 <= person['hypothesis'] < 2 and len(person['confidence']) == 16
  npz = np.load(tmp_path / 'walk_poses.npz')
  p = len(npz['ids'])
  for key, shape in (('boxes', (t, 4)), ('joints_2d', (t, 16, 2)), ('joints_3d', (t, 16, 3)),
                     ('hypotheses', (t, 2, 16, 3)), ('chosen', (t,)), ('present', (t,)),
                     ('root_camera_mm', (t, 3))):
    assert npz[key].shape == (p,) + shape, key
  for n in range(p):
    seen = npz['present'][n]
    chosen = npz['hypotheses'][n, seen, npz['chosen'][n, seen]]
    np.testing.assert_allclose(npz['joints_3d_raw'][n, seen], chosen, atol=1e-5)
  boxes, _, present = one_person(result)
  assert present.all()
  np.testing.assert_allclose(boxes[0], [0, 0, w, h])  # no search: the whole frame
  assert sorted(os.listdir(tmp_path)) == ['walk.json', 'walk_overlay.mp4', 'walk_poses.npz']
  assert result['crops_run'] >= t


def test_tracking_keeps_frames_only_within_the_iou(tiny_pipeline, clip_file, synthetic_clip,
                                                   tmp_path):
  """Each kept frame's box overlaps the box tracked from its previous frame."""
  h, w = synthetic_clip.frames.shape[1:3]
  for min_iou in (0.8, 1.0):
    result = _predict(tiny_pipeline, tmp_path / str(min_iou), video=str(clip_file),
                      track_min_iou=min_iou, smoothing='none')
    boxes, joints, present = one_person(result)
    assert present.all()
    for i in range(1, len(boxes)):
      want = _square_box(joints[i - 1], 1.25, h, w)
      assert tracking.iou(boxes[i], want) >= min_iou - 1e-6, (min_iou, i)
  # min_iou = 1: exactly frame-by-frame tracking.
  np.testing.assert_allclose(boxes[5], _square_box(joints[4], 1.25, h, w), atol=1e-3)


def test_boxes_file_and_folder_of_frames(tiny_pipeline, synthetic_clip, tmp_path):
  folder = tmp_path / 'frames'
  folder.mkdir()
  for i, frame in enumerate(synthetic_clip.frames):
    cv2.imwrite(str(folder / f'{i:04d}.png'), frame[..., ::-1])
  rows = [{'box': b.tolist()} for b in synthetic_clip.boxes]
  rows[4] = {'box': None}  # a frame without a person
  (tmp_path / 'boxes.json').write_text(json.dumps({'frames': rows}))
  result = _predict(tiny_pipeline, tmp_path / 'out', video=str(folder), fps=10.0,
                    boxes_file=str(tmp_path / 'boxes.json'))
  npz = np.load(tmp_path / 'out' / 'frames_poses.npz')
  keep = np.arange(30) != 4
  assert npz['ids'].tolist() == [0]  # the one-box-per-frame file: person 0
  np.testing.assert_allclose(npz['boxes'][0, keep], synthetic_clip.boxes[keep])
  assert not npz['present'][0, 4] and np.all(np.isnan(npz['joints_2d'][0, 4]))
  assert npz['present'][0, keep].all() and float(npz['fps']) == 10.0
  saved = json.loads((tmp_path / 'out' / 'frames.json').read_text())
  assert saved['frames'][4]['people'] == [] and saved['box_source'] == 'boxes_file'
  _, fps = _read_video(tmp_path / 'out' / 'frames_overlay.mp4')
  assert fps == pytest.approx(10.0)
  assert result['crops_run'] == 32  # 29 crops: 4 batches of 8, none rerun
  # CSV with a header gives the same boxes.
  csv = 'x0,y0,x1,y1\n' + '\n'.join(','.join(f'{v:.6f}' for v in b) for b in synthetic_clip.boxes)
  (tmp_path / 'boxes.csv').write_text(csv)
  with_csv = _predict(tiny_pipeline, tmp_path / 'csv', video=str(folder),
                      boxes_file=str(tmp_path / 'boxes.csv'), smoothing='none')
  np.testing.assert_allclose(with_csv['people'][0].boxes, synthetic_clip.boxes, atol=1e-4)


def test_low_confidence_frames_have_no_person(tiny_pipeline, clip_file, tmp_path):
  result = _predict(tiny_pipeline, tmp_path, video=str(clip_file), min_confidence=1e9,
                    boxes=' '.join(str(v) for v in (60, 20, 180, 170)))
  assert result['people'] == {}
  frames = json.loads((tmp_path / 'walk.json').read_text())['frames']
  assert len(frames) == 30 and all(f['people'] == [] for f in frames)
  npz = np.load(tmp_path / 'walk_poses.npz')
  assert npz['ids'].shape == (0,) and npz['joints_3d'].shape == (0, 30, 16, 3)
  # Frame 0 with the given box, cut; then per batch a search (24 windows:
  # 3 batches) that finds nobody, and the whole frame (1 batch) for 8 frames.
  assert result['crops_run'] == 8 + 4 * 8 * 4


@pytest.mark.parametrize('method', ['one_euro', 'savgol'])
def test_smoothing_lowers_acceleration(tiny_pipeline, synthetic_video, tmp_path, method):
  """On a shaking camera, smoothing cuts the mean joint acceleration by >= 30%."""
  clip = synthetic_video.render_clip(num_frames=30, jitter_px=4.0, seed=1)
  path = tmp_path / 'shaky.mp4'
  synthetic_video.write_video(str(path), clip.frames, clip.fps)
  boxes = clip.boxes + np.random.default_rng(0).normal(0, 4.0, (30, 1)) * [1, 1, 1, 1]
  (tmp_path / 'boxes.csv').write_text('\n'.join(' '.join(map(str, b)) for b in boxes))
  _predict(tiny_pipeline, tmp_path / 'out', video=str(path), smoothing=method,
           boxes_file=str(tmp_path / 'boxes.csv'))
  npz = np.load(tmp_path / 'out' / 'shaky_poses.npz')
  assert npz['ids'].tolist() == [0]
  for key in ('joints_2d', 'joints_3d'):
    raw, smooth = (smoothing.mean_acceleration(npz[k][0]) for k in (key + '_raw', key))
    assert smooth <= 0.7 * raw, (key, raw, smooth)


def _bad_inputs(root, clip, synthetic_video):
  (root / 'garbage.mp4').write_bytes(b'not a video' * 100)
  writer = cv2.VideoWriter(str(root / 'empty.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 25,
                           (64, 48))
  writer.release()
  (root / 'no_frames').mkdir()
  short = root / 'short'
  short.mkdir()
  for i in range(3):
    cv2.imwrite(str(short / f'{i}.png'), clip.frames[i][..., ::-1])
  (root / 'two_rows.csv').write_text('10 10 50 50\n10 10 50 50\n')
  (root / 'outside.csv').write_text('10 10 50 50\n300 10 400 90\n10 10 50 50\n')
  return {
      'unreadable video': (dict(video=str(root / 'garbage.mp4')), 'garbage.mp4', 'cannot read'),
      'zero frames': (dict(video=str(root / 'empty.avi')), 'empty.avi', 'no frames'),
      'empty folder': (dict(video=str(root / 'no_frames')), 'no_frames', 'no frames'),
      'row count': (dict(video=str(short), boxes_file=str(root / 'two_rows.csv')),
                    'two_rows.csv', '2 boxes for the 3 frames'),
      'box outside': (dict(video=str(short), boxes_file=str(root / 'outside.csv')),
                      'outside.csv', 'outside the 256x192 frame'),
      'first box outside': (dict(video=str(short), boxes='-90 -90 -10 -10'),
                            'config.predict.boxes', 'outside the 256x192 frame'),
      'two files': (dict(video=str(short), boxes_file=str(root / 'two_rows.csv'),
                         keypoints_file=str(root / 'two_rows.csv')),
                    'config.predict.keypoints_file', 'expected one of them'),
      'max_people': (dict(video=str(short), max_people=0), 'config.predict.max_people',
                     'a positive integer'),
      'intrinsics': (dict(video=str(short), intrinsics='500 500'), 'config.predict.intrinsics',
                     "'fx fy cx cy'"),
      'keypoints': (dict(video=str(short), keypoints_file=str(root / 'two_rows.csv')),
                    'two_rows.csv', 'not valid JSON'),
  }


def test_bad_inputs_fail_with_one_clear_error_and_no_output(tiny_pipeline, synthetic_clip,
                                                             synthetic_video, tmp_path):
  for case, (fields, name, words) in _bad_inputs(tmp_path, synthetic_clip,
                                                 synthetic_video).items():
    out = tmp_path / ('out_' + case.replace(' ', '_'))
    with pytest.raises((errors.InputError, errors.ConfigError)) as info:
      _predict(tiny_pipeline, out, **fields)
    message = str(info.value)
    assert name in message and words in message and 'expected' in message, (case, message)
    assert not out.exists() or not os.listdir(out), case


def test_failure_while_writing_leaves_no_partial_files(tiny_pipeline, clip_file, tmp_path,
                                                       monkeypatch):
  calls, original = [], video_overlay.render

  def failing_render(*args, **kwargs):
    calls.append(1)
    if len(calls) > 5:
      raise RuntimeError('disk full')
    return original(*args, **kwargs)

  monkeypatch.setattr(video_overlay, 'render', failing_render)
  with pytest.raises(RuntimeError, match='disk full'):
    _predict(tiny_pipeline, tmp_path, video=str(clip_file))
  assert os.listdir(tmp_path) == []


def test_bad_video_is_one_line_from_run_py(tmp_path):
  (tmp_path / 'garbage.mp4').write_bytes(b'nope')
  out = subprocess.run(
      [sys.executable, str(REPO / 'run.py'), '--config=' + str(REPO / 'configs' / 'tiny.py'),
       '--mode=predict', f'--workdir={tmp_path}',
       f'--config.predict.video={tmp_path / "garbage.mp4"}'],
      capture_output=True, text=True, timeout=300, cwd=str(REPO))
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'garbage.mp4' in lines[0] and 'Traceback' not in out.stderr


def test_tracked_boxes_follow_the_person(demo_workdir, synthetic_video, tmp_path):
  """From the true first box, the tracked boxes overlap the true ones (IoU >= 0.5).

  Six 30-frame clips (seeds 0-5, all that were tried): IoU >= 0.5 on most
  frames of every clip and on >= 80% of all frames. Measured with today's
  demo (integral-loss hourglass, 2400 steps) on the workdirs of three
  training seeds: 94%, 98% and 98% of all frames, the worst clip 67%
  (the box slowly shrinks: the detector underestimates the person's extent).
  The MSE-trained 600-step hourglass of the previous demo failed it.
  Starting without a box (the search) is not asserted: the demo's hourglass
  is no person detector (see the module docstring of predict_video.py).
  """
  workdir = demo_workdir
  hits = []
  for seed in range(6):
    clip = synthetic_video.render_clip(num_frames=30, seed=seed)
    path = tmp_path / f'walk{seed}.mp4'
    synthetic_video.write_video(str(path), clip.frames, clip.fps)
    config = demo.get_config()
    config.predict.update(video=str(path), output_dir=str(tmp_path / 'out'),
                          boxes=' '.join(f'{v:.1f}' for v in clip.boxes[0]))
    result = predict.predict(config_lib.finalize(config), workdir)
    ious = np.array([tracking.iou(a, b) if np.all(np.isfinite(a)) else 0.0
                     for a, b in zip(one_person(result)[0], clip.boxes)])
    print(f'seed {seed}: IoU with the true box per frame: {np.round(ious, 2).tolist()}')
    assert np.mean(ious >= 0.5) > 0.5, (seed, ious)
    hits.append(ious >= 0.5)
  assert np.mean(hits) >= 0.8, np.mean(hits, axis=1)


def test_bvh_of_each_person_follows_the_predicted_bones(tiny_pipeline, clip_file, tmp_path):
  """--config.predict.bvh=True: <name>_<id>.bvh per person; its bones point where the poses do."""
  from deepskeleton_jax.data import registry  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.inference import bvh_writer  # pylint: disable=g-import-not-at-top
  bvh_lib = registry.load_module('bvh_mocap', 'bvh')
  result = _predict(tiny_pipeline, tmp_path, video=str(clip_file), bvh=True)
  (pid, person), = result['people'].items()
  path = tmp_path / f'walk_{pid}.bvh'
  assert result['paths'][f'bvh_{pid}'] == str(path)
  motion = bvh_lib.load(path)
  assert motion.num_frames == result['num_frames']
  assert abs(motion.frame_time - 1.0 / result['fps']) < 1e-6
  fk = bvh_lib.forward_kinematics(motion)
  names = list(motion.names)
  poses = bvh_writer.hold_gaps(person.joints_3d, person.present) @ bvh_writer.CAMERA_TO_WORLD.T
  for p, c, _ in bvh_writer.TREE_BONES:
    if bvh_writer.BVH_NAMES[c] not in names:  # an end site: the one child of its parent's node
      continue
    got = fk[:, names.index(bvh_writer.BVH_NAMES[c])] - fk[:, names.index(bvh_writer.BVH_NAMES[p])]
    want = poses[:, c] - poses[:, p]
    cos = np.sum(got * want, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.5, (p, c)
