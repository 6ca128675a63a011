"""Tests of the human36m builder on a tiny fake release in the official layout."""

import logging
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import tensorflow_datasets as tfds

from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton

_CAMS = ('54138969', '55011271')
human36m = registry.load_module('human36m')
fake_release = registry.load_module('human36m', 'fake_release')
h36m_cameras = registry.load_module('human36m', 'h36m_cameras')


def _build(manual_dir, data_dir, **kwargs):
  kwargs = {'train_subjects': ('S1',), 'test_subjects': ('S9',),
            'cameras': _CAMS, 'train_every': 2, 'test_every': 3,
            'crop_size': 128, **kwargs}
  builder = human36m.Human36m(data_dir=str(data_dir),
                              config=human36m.Human36mConfig(name='t', **kwargs))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


class _Messages(logging.Handler):

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp('h36m_manual')
  poses = fake_release.make_release(
      root, {'S1': ('Walking 1', 'Eating'), 'S9': ('Walking 1', 'Directions')},
      _CAMS, num_frames=8, video_frames={('S1', 'Eating', '54138969'): 5})
  # A damaged video, listed in skip_videos by the build below.
  (root / 'S9' / 'Videos' / 'Directions.55011271.mp4').write_bytes(b'\0' * 64)
  # NaN joints in one frame: its examples are rejected.
  bad = poses['S1', 'Walking 1'].copy()
  bad[2, 3] = np.nan  # r_ankle
  fake_release.write_cdf(
      root / 'S1' / 'MyPoseFeatures' / 'D3_Positions' / 'Walking 1.cdf', bad)
  return root, poses


@pytest.fixture(scope='module')
def built(release, tmp_path_factory):
  handler = _Messages()
  logging.getLogger().addHandler(handler)
  try:
    builder = _build(release[0], tmp_path_factory.mktemp('h36m_data'),
                     skip_videos=('S9/Directions.55011271',))
  finally:
    logging.getLogger().removeHandler(handler)
  return builder, handler.messages


def _examples(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def test_splits_subsampling_short_video_skips_and_rejections(built):
  builder, messages = built
  train = _examples(builder, 'train')
  test = _examples(builder, 'test')
  ids = lambda exs: sorted((e['subject'].decode(), e['action'].decode(),
                            e['camera'].decode(), int(e['frame'])) for e in exs)
  expected_train = (
      [('S1', 'Eating', '54138969', f) for f in (0, 2, 4)] +   # 5-frame video
      [('S1', 'Eating', '55011271', f) for f in (0, 2, 4, 6)] +
      [('S1', 'Walking 1', c, f) for c in _CAMS for f in (0, 4, 6)])  # 2: NaN
  expected_test = (
      [('S9', 'Directions', '54138969', f) for f in (0, 3, 6)] +  # other: skip
      [('S9', 'Walking 1', c, f) for c in _CAMS for f in (0, 3, 6)])
  assert ids(train) == sorted(expected_train)
  assert ids(test) == sorted(expected_test)
  text = '\n'.join(messages)
  assert 'rejected 2 invalid examples' in text
  assert 'has 5 frames but its CDF 8' in text
  assert 'skipping S9/Directions.55011271' in text


def _independent_projection(subject, cam_id, world):
  """Camera-frame joints and distorted pixels without the project's code."""
  orientation, centre = h36m_cameras.EXTRINSICS[subject][
      h36m_cameras.CAMERA_IDS.index(cam_id)]
  r_c2w = Rotation.from_quat(np.roll(orientation, -1)).as_matrix()
  cam = (world.astype(np.float64) - centre) @ r_c2w  # = R^T (X - C) per row
  intr = h36m_cameras.INTRINSICS[cam_id]
  k1, k2, k3 = intr['radial_distortion']
  p = np.array(intr['tangential_distortion'])
  u = cam[:, :2] / cam[:, 2:]
  r2 = (u**2).sum(-1, keepdims=True)
  u = u * (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3 + (p * u).sum(-1, keepdims=True)
           ) + p * r2
  return cam, u * intr['focal_length'] + intr['center']


def test_joints_agree_with_independent_projection_and_image(built, release):
  builder, _ = built
  _, poses = release
  for split in ('train', 'test'):
    for ex in _examples(builder, split):
      subject, action = ex['subject'].decode(), ex['action'].decode()
      cam_id, frame = ex['camera'].decode(), int(ex['frame'])
      world = poses[subject, action][frame][skeleton.H36M32_TO_SKELETON]
      cam_pts, pixels = _independent_projection(subject, cam_id, world)
      np.testing.assert_allclose(ex['joints_3d'], cam_pts, atol=0.05)
      # Stored crop joints, mapped through the stored crop->image affine,
      # land on the independent (distorted) projection.
      np.testing.assert_allclose(
          camera.apply_affine(ex['joints_2d'].astype(np.float64),
                              ex['crop_to_image'].astype(np.float64)),
          pixels, atol=0.02)
      # Pinhole projection through the stored crop intrinsics: equal up to
      # the lens distortion (small near the image centre).
      pinhole = camera.project_intrinsics(ex['joints_3d'].astype(np.float64),
                                          ex['intrinsics'].astype(np.float64))
      assert np.abs(pinhole - ex['joints_2d']).max() < 2.0
      # Box: larger extent of the projected joints x 1.25 x crop scale 1.5.
      extent = (pixels.max(0) - pixels.min(0)).max()
      np.testing.assert_allclose(ex['crop_to_image'][0, 0] * 128,
                                 extent * 1.25 * 1.5, rtol=1e-4)
      assert ex['visible'].all() and ex['has_3d'] and ex['has_intrinsics']
      # The video's dots appear at the stored joints in the stored crop.
      image = ex['image']
      assert image.shape == (128, 128, 3)
      cols, rows = np.floor(ex['joints_2d']).astype(int).T
      assert np.all(image[rows, cols].mean(-1) > 150), (subject, action, frame)
      assert np.median(image) < 80


def test_missing_files_are_listed_with_the_layout(release, tmp_path):
  root = tmp_path / 'manual'
  shutil.copytree(release[0] / 'S1', root / 'S1')
  (root / 'S1' / 'Videos' / 'Eating.55011271.mp4').unlink()
  with pytest.raises(ValueError) as info:
    _build(root, tmp_path / 'data')
  message = str(info.value)
  assert 'lacks 3 files' in message
  assert 'Eating.55011271.mp4' in message
  assert str(root / 'S9' / 'Videos') in message
  assert 'Expected layout' in message and 'D3_Positions/<Action>.cdf' in message


@pytest.mark.parametrize('damaged, message', [
    ('S9/MyPoseFeatures/D3_Positions/Walking 1.cdf', 'not a readable CDF'),
    ('S9/Videos/Walking 1.55011271.mp4', 'cannot open the video'),
])
def test_corrupt_files_are_named_and_leave_no_dataset(release, tmp_path,
                                                      damaged, message):
  root = tmp_path / 'manual'
  shutil.copytree(release[0], root)
  (root / damaged).write_bytes(b'this is not a valid file' * 8)
  with pytest.raises(ValueError, match=message) as info:
    _build(root, tmp_path / 'data', skip_videos=('S9/Directions.55011271',))
  assert str(root / damaged) in str(info.value)
  # The train split was written before the failure; nothing is left.
  assert not list((tmp_path / 'data').rglob('dataset_info.json'))
  assert not list((tmp_path / 'data').rglob('*array_record*'))
  assert not list((tmp_path / 'data').rglob('incomplete*'))


def test_config_validation():
  with pytest.raises(ValueError, match='subjects'):
    human36m.Human36mConfig(name='x', train_subjects=('S2',))
  with pytest.raises(ValueError, match='cameras'):
    human36m.Human36mConfig(name='x', cameras=('1',))
  with pytest.raises(ValueError, match='test_every'):
    human36m.Human36mConfig(name='x', test_every=0)
