"""Tests of the bvh_mocap builder on the CMU files in shared/data."""

import logging
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deepskeleton_jax import errors
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
  holdout = _all(built.as_data_source('holdout'))
  test = _all(built.as_data_source('test'))
  # test_files=131_03; of the other two, one (the later) is held out.
  assert len(test) == 2 * counts['131_03']
  assert len(holdout) == 2 * counts['131_02']
  assert len(train) == 2 * counts['131_01']
  assert {e['action'] for e in test} == {b'131_03'}
  assert {e['action'] for e in holdout} == {b'131_02'}
  assert {e['camera'] for e in train} == {b'virtual0', b'virtual1'}
  assert built.info.metadata['skipped_files'] == []


def test_holdout_files_are_spread_evenly():
  files = [f'{k:02d}' for k in range(40)]
  held = bvh_mocap.evenly_spaced(files, 0.05)
  assert held == ['10', '30']  # 2 of 40, one per half.
  assert bvh_mocap.evenly_spaced(files[:3], 0.05) == ['01']
  assert bvh_mocap.evenly_spaced(files[:1], 0.5) == []  # train keeps one.
  assert len(bvh_mocap.evenly_spaced(files, 0.5)) == 20


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
  # Another folder layout: the same file names give the same views.
  for name in ('131_01', '131_02', '131_03'):
    shutil.copy(shared_data / 'cmu_mocap' / f'{name}.bvh', manual)
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
  with pytest.raises(errors.InputError, match=r'no \.bvh files.*expected layout'):
    _build(empty, tmp_path / 'd1')
  bad = tmp_path / 'bad'
  bad.mkdir()
  for name in 'abc':
    (bad / f'{name}.bvh').write_text('HIERARCHY\nROOT Hips\n{\n')
  with pytest.raises(errors.InputError, match=r'a\.bvh.*MOTION'):
    _build(bad, tmp_path / 'd2', strict=True)
  # A failed build leaves no dataset behind.
  assert not list((tmp_path / 'd2').rglob('dataset_info.json'))
  assert not list((tmp_path / 'd2').rglob('*.array_record*'))
  with pytest.raises(errors.ConfigError, match='test_files'):
    _build(bad, tmp_path / 'd3', test_files=('zzz',))
  with pytest.raises(errors.ConfigError, match='joint_mapping'):
    bvh_mocap.BvhMocapConfig(name='x', joint_mapping=('Hips',))
  with pytest.raises(errors.ConfigError, match='holdout_fraction'):
    bvh_mocap.BvhMocapConfig(name='x', holdout_fraction=1.0)


def _bad_folder(shared_data, root):
  """The CMU files and, among them, malformed ones (like the real conversion)."""
  for f in sorted((shared_data / 'cmu_mocap').glob('*.bvh')):
    shutil.copy(f, root / f.name)
  good = (shared_data / 'cmu_mocap' / '131_01.bvh').read_text()
  bad = {
      '131_01b.bvh': good[:len(good) // 2],  # Truncated motion.
      '131_02b.bvh': 'HIERARCHY\nROOT Hips\n{\n',  # No MOTION.
      # A hierarchy without the joints of the mapping (renamed knees).
      '131_02c.bvh': good.replace('LeftKnee', 'LKnee'),
  }
  for name, text in bad.items():
    (root / name).write_text(text)
  return sorted(str(root / n) for n in bad)


def test_bad_files_are_skipped_named_and_counted(shared_data, tmp_path, caplog):
  manual = tmp_path / 'manual'
  manual.mkdir()
  bad = _bad_folder(shared_data, manual)
  with caplog.at_level(logging.WARNING):
    builder = _build(manual, tmp_path / 'data', frame_every=80,
                     test_files=('131_03',), holdout_files=('131_02',),
                     crop_size=32)
  assert builder.info.metadata['skipped_files'] == bad
  for path in bad:
    assert path in caplog.text
  assert 'skipped 3 bad files' in caplog.text
  names = lambda split: {e['action'] for e in _all(builder.as_data_source(split))}
  assert names('train') == {b'131_01'}
  assert names('holdout') == {b'131_02'} and names('test') == {b'131_03'}


def test_strict_build_fails_on_the_first_bad_file_naming_it(shared_data, tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  bad = _bad_folder(shared_data, manual)
  for path in bad[:2]:
    pathlib.Path(path).unlink()
  # Only the hierarchy without the mapped joints is left: its error names it.
  with pytest.raises(errors.InputError) as info:
    _build(manual, tmp_path / 'data', frame_every=80, test_files=('131_03',),
           holdout_files=('131_02',), strict=True)
  assert str(info.value).startswith(bad[2] + ': ')
  assert "mapping names joints ['LeftKnee']" in str(info.value)


def test_a_split_whose_only_file_is_bad_names_the_split_and_the_file(shared_data, tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for f in sorted((shared_data / 'cmu_mocap').glob('*.bvh')):
    shutil.copy(f, manual / f.name)
  broken = manual / '131_02.bvh'  # the holdout split's only file
  broken.write_text('HIERARCHY\nROOT Hips\n{\n')
  with pytest.raises(errors.InputError) as info:
    _build(manual, tmp_path / 'data', frame_every=80, test_files=('131_03',),
           holdout_files=('131_02',), crop_size=32)
  assert str(info.value) == (
      f"bvh_mocap: split 'holdout' has no examples: its only file was skipped as bad "
      f'(strict=False): {broken} (not a valid BVH file: no MOTION section); fix or replace '
      'it, or give the split other files')
  assert not list((tmp_path / 'data').rglob('dataset_info.json'))
