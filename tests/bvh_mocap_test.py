"""Tests of the bvh_mocap builder on the CMU files in shared/data."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import camera
from deepskeleton_jax.geometry import skeleton

bvh = registry.load_module('bvh_mocap', 'bvh')
bvh_mocap = registry.load_module('bvh_mocap')


def _build(manual_dir, data_dir, **kwargs):
  config = bvh_mocap.BvhMocapConfig(name='test', **kwargs)
  builder = bvh_mocap.BvhMocap(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope='module')
def built(shared_data, tmp_path_factory):
  manual = tmp_path_factory.mktemp('manual')
  for f in sorted((shared_data / 'cmu_mocap').glob('*.bvh')):
    (manual / 'subject131').mkdir(exist_ok=True)
    shutil.copy(f, manual / 'subject131' / f.name)
  builder = _build(manual, tmp_path_factory.mktemp('data'), frame_every=40,
                   cameras_per_pose=2, test_files=('131_03',), crop_size=64)
  return builder


def _all(source):
  return [source[i] for i in range(len(source))]


def test_split_sizes_follow_files_and_subsampling(built, shared_data):
  counts = {f.stem: -(-bvh.load(f).num_frames // 40)
            for f in (shared_data / 'cmu_mocap').glob('*.bvh')}
  train = _all(built.as_data_source('train'))
  test = _all(built.as_data_source('test'))
  assert len(test) == 2 * counts['131_03']
  assert len(train) == 2 * (counts['131_01'] + counts['131_02'])
  assert {e['action'] for e in test} == {b'131_03'}
  assert {e['camera'] for e in train} == {b'virtual0', b'virtual1'}


def test_joints_project_through_stored_intrinsics_and_fill_the_crop(built):
  for ex in _all(built.as_data_source('train')):
    assert ex['has_3d'] and ex['has_intrinsics'] and ex['visible'].all()
    assert ex['image'].shape == (1, 1, 3)
    np.testing.assert_allclose(
        camera.project_intrinsics(ex['joints_3d'].astype(np.float64),
                                  ex['intrinsics'].astype(np.float64)),
        ex['joints_2d'], atol=1e-2)
    # The box is the joints' extent x 1.25, the crop 1.5 x that, centred.
    lo, hi = ex['joints_2d'].min(0), ex['joints_2d'].max(0)
    np.testing.assert_allclose(np.max(hi - lo) * 1.25 * 1.5, 64, rtol=1e-4)
    np.testing.assert_allclose((lo + hi) / 2, [32, 32], atol=1e-3)
    depth = ex['joints_3d'][:, 2]
    assert np.all((depth > 3000) & (depth < 7000))


def test_limbs_keep_their_length_across_frames_and_views(built):
  examples = _all(built.as_data_source('train'))
  joints = np.stack([e['joints_3d'] for e in examples])
  for side in ('l', 'r'):
    for a, b in (('hip', 'knee'), ('knee', 'ankle'), ('shoulder', 'elbow'),
                 ('elbow', 'wrist')):
      i = skeleton.JOINT_INDEX[f'{side}_{a}']
      j = skeleton.JOINT_INDEX[f'{side}_{b}']
      length = np.linalg.norm(joints[:, i] - joints[:, j], axis=-1)
      assert np.ptp(length) < 1.0, (side, a, b)
  thigh = np.linalg.norm(joints[:, 3] - joints[:, 4], axis=-1)
  assert 350 < thigh.mean() < 500


def test_cameras_are_upright_and_not_mirrored():
  target = np.array([100.0, 900.0, -50.0])
  rng = np.random.default_rng(0)
  for _ in range(20):
    rot, t = bvh_mocap.look_at_camera(target, rng.uniform(0, 360),
                                      rng.uniform(-5, 25), 5000.0)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    cam = camera.world_to_camera(np.stack([target, target + [0, 100, 0]]), rot, t)
    np.testing.assert_allclose(cam[0], [0, 0, 5000.0], atol=1e-9)
    assert cam[1, 1] < -90  # World up (+Y) is image up (-y).
  # Facing a subject who faces +Z (camera on +Z), the subject's left (+X,
  # CMU's `Left*`) appears on the image's right.
  rot, t = bvh_mocap.look_at_camera(np.zeros(3), 0.0, 0.0, 5000.0)
  cam = camera.world_to_camera(np.array([[100.0, 0, 0]]), rot, t)
  assert cam[0, 0] > 0


def test_rebuild_is_identical(built, shared_data, tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  shutil.copy(shared_data / 'cmu_mocap' / '131_01.bvh', manual)
  shutil.copy(shared_data / 'cmu_mocap' / '131_03.bvh', manual)
  other = _build(manual, tmp_path / 'data', frame_every=40,
                 cameras_per_pose=2, test_files=('131_03',), crop_size=64)
  a = _all(built.as_data_source('test'))
  b = _all(other.as_data_source('test'))
  key = lambda e: (e['frame'], e['camera'])
  for x, y in zip(sorted(a, key=key), sorted(b, key=key)):
    np.testing.assert_array_equal(x['joints_3d'], y['joints_3d'])


def test_bad_manual_dirs(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'readme.txt').write_text('no bvh here')
  with pytest.raises(ValueError, match=r'no \.bvh files.*expected layout'):
    _build(empty, tmp_path / 'd1')
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'a.bvh').write_text('HIERARCHY\nROOT Hips\n{\n')
  (bad / 'b.bvh').write_text('HIERARCHY\nROOT Hips\n{\n')
  with pytest.raises(ValueError, match=r'a\.bvh.*MOTION'):
    _build(bad, tmp_path / 'd2')
  # A failed build leaves no dataset behind.
  assert not list((tmp_path / 'd2').rglob('dataset_info.json'))
  assert not list((tmp_path / 'd2').rglob('*.array_record*'))
  with pytest.raises(ValueError, match='test_files'):
    _build(bad, tmp_path / 'd3', test_files=('zzz',))
  with pytest.raises(ValueError, match='joint_mapping'):
    bvh_mocap.BvhMocapConfig(name='x', joint_mapping=('Hips',))
