"""Tests of the human36m builder on a tiny fake release in the official layout."""

import logging
import shutil

import cdflib.cdfwrite
import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton

_CAMS = ('54138969', '55011271')
human36m = registry.load_module('human36m')
fake_release = registry.load_module('human36m', 'fake_release')
h36m_cameras = registry.load_module('human36m', 'h36m_cameras')

# Official names: takes, both spellings (S9's 'Photo 1' CDF with a
# 'TakingPhoto 1' video), S11's 'Directions' (dropped by default).
_ACTIONS = {'S1': ('Walking 1', 'TakingPhoto', 'SittingDown 2'),
            'S9': ('Walking', 'Photo 1'),
            'S11': ('Directions', 'Directions 1')}


def _build(manual_dir, data_dir, **kwargs):
  kwargs = {'train_subjects': ('S1',), 'test_subjects': ('S9', 'S11'),
            'cameras': _CAMS, 'train_every': 2, 'test_every': 3,
            'holdout_fraction': 0.3, 'crop_size': 128, **kwargs}
  builder = human36m.Human36m(data_dir=str(data_dir),
                              config=human36m.Human36mConfig(name='t', **kwargs))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


class _Messages(logging.Handler):

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp('h36m_manual')
  poses = fake_release.make_release(
      root, _ACTIONS, _CAMS, num_frames=8,
      video_names={('S9', 'Photo 1'): 'TakingPhoto 1'},
      video_frames={('S1', 'TakingPhoto', '54138969'): 5}, mono=True)
  # S11 Directions: damaged like the release's (54138969), and dropped.
  (root / 'S11' / 'Videos' / 'Directions.54138969.mp4').write_bytes(b'\0' * 64)
  # A damaged video, listed in skip_videos by the build below.
  (root / 'S9' / 'Videos' / 'Walking.55011271.mp4').write_bytes(b'\0' * 64)
  # NaN joints in one frame: its examples are rejected.
  bad = poses['S1', 'Walking 1'].copy()
  bad[2, 3] = np.nan  # r_ankle
  fake_release.write_cdf(
      root / 'S1' / 'MyPoseFeatures' / 'D3_Positions' / 'Walking 1.cdf', bad)
  (root / 'S1' / 'MyPoseFeatures' / 'D3_Positions_mono' /
   'Walking 1.54138969.cdf').unlink()  # NaN poses: no mono check there.
  (root / 'S1' / 'MyPoseFeatures' / 'D3_Positions_mono' /
   'Walking 1.55011271.cdf').unlink()
  return root, poses


@pytest.fixture(scope='module')
def built(release, tmp_path_factory):
  handler = _Messages()
  logging.getLogger().addHandler(handler)
  try:
    builder = _build(release[0], tmp_path_factory.mktemp('h36m_data'),
                     skip_videos=('S9/Walking.55011271',))
  finally:
    logging.getLogger().removeHandler(handler)
  return builder, handler.messages


def _examples(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def _ids(examples):
  return sorted((e['subject'].decode(), e['action'].decode(),
                 e['camera'].decode(), int(e['frame'])) for e in examples)


def test_splits_holdout_subsampling_short_video_skips_and_rejections(built):
  builder, messages = built
  # 8 pose frames, every 2nd: 0 2 4 6; holdout: the last ceil(0.3 x 4) = 2.
  expected_train = (
      [('S1', a, c, f) for a in ('SittingDown 2', 'TakingPhoto')
       for c in _CAMS for f in (0, 2)] +
      [('S1', 'Walking 1', c, 0) for c in _CAMS])  # 2: NaN.
  expected_holdout = (
      [('S1', 'SittingDown 2', c, f) for c in _CAMS for f in (4, 6)] +
      [('S1', 'TakingPhoto', '54138969', 4)] +  # 5-frame video.
      [('S1', 'TakingPhoto', '55011271', f) for f in (4, 6)] +
      [('S1', 'Walking 1', c, f) for c in _CAMS for f in (4, 6)])
  expected_test = (
      [('S11', 'Directions 1', c, f) for c in _CAMS for f in (0, 3, 6)] +
      [('S9', 'Photo 1', c, f) for c in _CAMS for f in (0, 3, 6)] +
      [('S9', 'Walking', '54138969', f) for f in (0, 3, 6)])  # other: skip
  assert _ids(_examples(builder, 'train')) == sorted(expected_train)
  assert _ids(_examples(builder, 'holdout')) == sorted(expected_holdout)
  assert _ids(_examples(builder, 'test')) == sorted(expected_test)
  text = '\n'.join(messages)
  assert 'rejected 2 invalid examples' in text
  assert 'has 5 frames but its CDF 8' in text
  assert 'skipping S9/Walking.55011271' in text
  assert 'skipping S11/Directions, all cameras' in text
  assert builder.info.metadata['skipped_files'] == []
  assert builder.info.metadata['rejected_examples'] == 2
  # The consistent mono files of the 9 videos built pass the check.
  check = builder.info.metadata['mono_check']
  assert check['files'] == 9 and check['max_deviation_mm'] < 0.01


def test_held_out_frames_are_the_end_of_each_video():
  assert [human36m.num_held_out(n, 0.05) for n in (1, 19, 20, 21, 277)] == [
      1, 1, 1, 2, 14]
  assert human36m.num_held_out(4, 0.3) == 2
  assert human36m.num_held_out(0, 0.3) == 0


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
  for split in ('train', 'holdout', 'test'):
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


def test_fake_release_has_the_official_shapes_and_names(release):
  root, _ = release
  sizes = {'54138969': (1000, 1002), '60457274': (1000, 1002),
           '55011271': (1000, 1000), '58860488': (1000, 1000)}
  for video in sorted((root / 'S1' / 'Videos').glob('*.mp4')):
    cam_id = video.name.split('.')[-2]
    cap = cv2.VideoCapture(str(video))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    assert size == sizes[cam_id] and cap.get(cv2.CAP_PROP_FPS) == 50, video
    cap.release()
  assert (root / 'S9' / 'Videos' / 'TakingPhoto 1.55011271.mp4').exists()
  assert (root / 'S9' / 'MyPoseFeatures' / 'D3_Positions' / 'Photo 1.cdf').exists()
  names = {a for actions in fake_release.RELEASE_ACTIONS.values() for a in actions}
  assert {'Walking', 'Walking 1', 'TakingPhoto', 'Photo', 'WalkDog',
          'WalkingDog 1', 'WalkTogether 1', 'SittingDown 2'} <= names
  assert 'Directions' in fake_release.RELEASE_ACTIONS['S11']


def test_missing_files_are_listed_with_the_layout(release, tmp_path):
  root = tmp_path / 'manual'
  shutil.copytree(release[0] / 'S1', root / 'S1')
  (root / 'S1' / 'Videos' / 'TakingPhoto.55011271.mp4').unlink()
  with pytest.raises(errors.InputError) as info:
    _build(root, tmp_path / 'data', test_subjects=('S9',))
  message = str(info.value)
  assert 'lacks 3 files' in message
  assert 'TakingPhoto.55011271.mp4' in message
  assert str(root / 'S9' / 'Videos') in message
  assert 'Expected layout' in message and 'D3_Positions/<Action>.cdf' in message


def _write_garbage(path):
  path.write_bytes(b'this is not a valid file' * 8)


def _write_2d_cdf(path):
  """A D2_Positions-like CDF: 12 frames of 32 x 2 values, 768 = 8 x 96 in all."""
  data = np.arange(12 * 64, dtype=np.float32).reshape(1, 12, 64)
  path.unlink()
  cdf = cdflib.cdfwrite.CDF(str(path), cdf_spec={}, delete=True)
  cdf.write_var({'Variable': 'Pose', 'Data_Type': cdflib.cdfwrite.CDF.CDF_FLOAT,
                 'Num_Elements': 1, 'Rec_Vary': True, 'Dim_Sizes': [12, 64]},
                var_data=data)
  cdf.close()


_DAMAGED = [
    ('S9/MyPoseFeatures/D3_Positions/Photo 1.cdf', 'not a readable CDF', _write_garbage),
    ('S11/Videos/Directions 1.55011271.mp4', 'cannot open the video', _write_garbage),
    # 8 x 96 values, as many as the video's 8 frames: the shape tells it apart.
    ('S1/MyPoseFeatures/D3_Positions/TakingPhoto.cdf',
     r'shape \(1, 12, 64\); expected numbers of shape \(1, frames, 96\)', _write_2d_cdf),
]


def _no_dataset_left(data_dir):
  assert not list(data_dir.rglob('dataset_info.json'))
  assert not list(data_dir.rglob('*array_record*'))
  assert not list(data_dir.rglob('incomplete*'))


@pytest.mark.parametrize('damaged, message, write', _DAMAGED)
def test_strict_build_names_a_corrupt_file_and_leaves_no_dataset(
    release, tmp_path, damaged, message, write):
  root = tmp_path / 'manual'
  shutil.copytree(release[0], root)
  write(root / damaged)
  with pytest.raises(errors.InputError, match=message) as info:
    registry.prepare(_registry_config(root, tmp_path / 'data', strict=True))
  assert str(root / damaged) in str(info.value)
  # The train split was written before the failure; nothing is left.
  _no_dataset_left(tmp_path / 'data')


def _registry_config(manual_dir, data_dir, **kwargs):
  import ml_collections  # pylint: disable=g-import-not-at-top
  kwargs = {'train_subjects': ['S1'], 'test_subjects': ['S9', 'S11'],
            'cameras': list(_CAMS), 'train_every': 2, 'test_every': 3,
            'crop_size': 64, 'skip_videos': ['S9/Walking.55011271'], **kwargs}
  return ml_collections.ConfigDict({
      'name': 'human36m', 'data_dir': str(data_dir), 'manual_dir': str(manual_dir),
      'builder_kwargs': kwargs, 'beam_num_workers': 0, 'beam_options': ''})


def test_bad_files_are_skipped_named_and_counted(release, tmp_path, caplog):
  root = tmp_path / 'manual'
  shutil.copytree(release[0], root)
  for damaged, _, write in _DAMAGED:
    write(root / damaged)
  # A re-encoded video of the wrong frame size is a bad file too.
  small = root / 'S1' / 'Videos' / 'SittingDown 2.54138969.mp4'
  writer = cv2.VideoWriter(str(small), cv2.VideoWriter_fourcc(*'mp4v'), 50,
                           (500, 501))
  for _ in range(8):
    writer.write(np.zeros((501, 500, 3), np.uint8))
  writer.release()
  with caplog.at_level(logging.WARNING):
    builder = _build(root, tmp_path / 'data', skip_videos=('S9/Walking.55011271',))
  skipped = [str(root / d) for d, _, _ in _DAMAGED] + [str(small)]
  assert builder.info.metadata['skipped_files'] == sorted(skipped)
  assert 'skipped 4 bad files' in caplog.text
  assert 'this camera records 1000x1002' in caplog.text
  assert f'skipping {root / _DAMAGED[2][0]} (strict=False): variable "Pose" holds' \
      in caplog.text
  # The bad CDF drops both cameras of S9 Photo 1, the bad videos their own.
  test = {(s, a, c) for s, a, c, _ in _ids(_examples(builder, 'test'))}
  assert test == {('S9', 'Walking', '54138969'),
                  ('S11', 'Directions 1', '54138969')}
  train = _ids(_examples(builder, 'train')) + _ids(_examples(builder, 'holdout'))
  assert ('S1', 'SittingDown 2', '54138969', 0) not in train
  assert ('S1', 'SittingDown 2', '55011271', 0) in train
  assert not {a for _, a, _, _ in train} & {'TakingPhoto'}  # its 2D CDF
  # The metadata survives a reload from disk.
  again = human36m.Human36m(data_dir=str(tmp_path / 'data'),
                            config=builder.builder_config)
  assert again.info.metadata['skipped_files'] == sorted(skipped)


def test_mono_positions_that_disagree_fail_naming_the_file(release, tmp_path):
  root = tmp_path / 'manual'
  shutil.copytree(release[0], root)
  wrong = root / 'S9' / 'MyPoseFeatures' / 'D3_Positions_mono' / 'Photo 1.55011271.cdf'
  fake_release.write_mono_cdf(wrong, 'S9', '55011271',
                              release[1]['S9', 'Photo 1'], error_mm=7.0)
  with pytest.raises(errors.InputError, match='by up to 7.00 mm') as info:
    registry.prepare(_registry_config(root, tmp_path / 'data'))
  assert str(wrong) in str(info.value)
  _no_dataset_left(tmp_path / 'data')
  # A looser threshold accepts it and records the deviation.
  builder = registry.prepare(_registry_config(root, tmp_path / 'data',
                                              mono_check_mm=10.0))
  check = builder.info.metadata['mono_check']
  assert check['worst_file'] == str(wrong)
  np.testing.assert_allclose(check['max_deviation_mm'], 7.0, atol=0.01)


def test_config_validation():
  with pytest.raises(errors.ConfigError, match='subjects'):
    human36m.Human36mConfig(name='x', train_subjects=('S2',))
  with pytest.raises(errors.ConfigError, match='cameras'):
    human36m.Human36mConfig(name='x', cameras=('1',))
  with pytest.raises(errors.ConfigError, match='test_every'):
    human36m.Human36mConfig(name='x', test_every=0)
  with pytest.raises(errors.ConfigError, match='holdout_fraction'):
    human36m.Human36mConfig(name='x', holdout_fraction=0.0)
  default = human36m.Human36m.BUILDER_CONFIGS[0]
  assert default.skip_sequences == ('S11/Directions',)
  assert not default.strict and default.holdout_fraction == 0.05
