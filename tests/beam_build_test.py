"""Beam builds (DirectRunner, 2 worker processes) give the sequential build's data.

Needs apache-beam (`pip install -r requirements-beam.txt`); skipped without it.
"""

import shutil

import ml_collections
import numpy as np
import pytest

import mpii_release  # tests/mpii_release.py

from deepskeleton_jax import errors
from deepskeleton_jax.data import registry

pytest.importorskip('apache_beam')

fake_release = registry.load_module('human36m', 'fake_release')
_CAMS = ('54138969', '60457274')


def _config(name, manual_dir, data_dir, workers, **kwargs):
  return ml_collections.ConfigDict({
      'name': name, 'data_dir': str(data_dir), 'manual_dir': str(manual_dir),
      'builder_kwargs': kwargs, 'beam_num_workers': workers, 'beam_options': ''})


def _by_key(builder, split, key):
  source = registry.split_source(builder, split, decode_image=False)
  examples = [source[i] for i in range(len(source))]
  return dict(sorted((key(e), e) for e in examples))


def _assert_same(a, b, splits, key):
  for split in splits:
    x, y = _by_key(a, split, key), _by_key(b, split, key)
    assert list(x) == list(y), split
    assert x, split
    for k in x:
      assert sorted(x[k]) == sorted(y[k])
      for field in x[k]:
        # Images compared as their stored JPEG bytes.
        np.testing.assert_array_equal(x[k][field], y[k][field],
                                      err_msg=f'{split} {k} {field}')


def _h36m_key(e):
  return (e['subject'].decode(), e['action'].decode(), e['camera'].decode(),
          int(e['frame']))


@pytest.fixture(scope='module')
def h36m_release(tmp_path_factory):
  root = tmp_path_factory.mktemp('h36m_beam_manual')
  fake_release.make_release(
      root, {'S1': ('Walking', 'Walking 1', 'TakingPhoto'),
             'S5': ('WalkDog', 'SittingDown 2'),
             'S9': ('Photo 1', 'WalkTogether 1')},
      _CAMS, num_frames=12, mono=True)
  bad = root / 'S5' / 'Videos' / 'WalkDog.60457274.mp4'
  bad.write_bytes(b'not a video' * 10)  # Skipped (strict=False) and listed.
  return root, bad


_H36M = dict(train_subjects=['S1', 'S5'], test_subjects=['S9'],
             cameras=list(_CAMS), train_every=2, test_every=3, crop_size=48,
             holdout_fraction=0.2)


def test_human36m_beam_build_equals_the_sequential_build(h36m_release, tmp_path):
  root, bad = h36m_release
  sequential = registry.prepare(_config('human36m', root, tmp_path / 'seq', 0,
                                        **_H36M))
  beam = registry.prepare(_config('human36m', root, tmp_path / 'beam', 2, **_H36M))
  _assert_same(sequential, beam, ('train', 'holdout', 'test'), _h36m_key)
  for info in (sequential.info, beam.info):
    assert info.metadata['skipped_files'] == [str(bad)]
    assert info.metadata['mono_check']['files'] == 13
  assert sequential.info.metadata == beam.info.metadata
  assert not list((tmp_path / 'beam').rglob('side_records*'))


def test_failed_beam_build_names_the_file_and_leaves_nothing(h36m_release,
                                                             tmp_path):
  root, bad = h36m_release
  with pytest.raises(errors.InputError, match='cannot open the video') as info:
    registry.prepare(_config('human36m', root, tmp_path / 'data', 2,
                             strict=True, **_H36M))
  assert str(bad) in str(info.value)
  assert not (tmp_path / 'data').exists()


def test_bvh_beam_build_equals_the_sequential_build(shared_data, tmp_path):
  manual = tmp_path / 'manual'
  (manual / '131').mkdir(parents=True)
  for f in sorted((shared_data / 'cmu_mocap').glob('*.bvh')):
    shutil.copy(f, manual / '131' / f.name)
  (manual / '131' / 'broken.bvh').write_text('HIERARCHY\nROOT Hips\n{\n')
  kwargs = dict(frame_every=60, crop_size=32, test_files=['131_03'])
  sequential = registry.prepare(_config('bvh_mocap', manual, tmp_path / 'seq', 0,
                                        **kwargs))
  beam = registry.prepare(_config('bvh_mocap', manual, tmp_path / 'beam', 2,
                                  **kwargs))
  key = lambda e: (e['image_name'].decode(), int(e['frame']), e['camera'].decode())
  _assert_same(sequential, beam, ('train', 'holdout', 'test'), key)
  assert beam.info.metadata['skipped_files'] == [str(manual / '131' / 'broken.bvh')]
  assert sequential.info.metadata == beam.info.metadata


def test_mpii_beam_build_equals_the_sequential_build(shared_data, tmp_path):
  manual = tmp_path / 'manual'
  mpii_release.copy_json_release(shared_data, manual)
  bad = sorted((manual / 'images').glob('*.jpg'))[1]
  bad.write_bytes(b'not a jpeg')
  sequential = registry.prepare(_config('mpii', manual, tmp_path / 'seq', 0,
                                        crop_size=32))
  beam = registry.prepare(_config('mpii', manual, tmp_path / 'beam', 2,
                                  crop_size=32))
  key = lambda e: (e['image_name'].decode(), int(e['frame']))
  _assert_same(sequential, beam, ('train', 'holdout', 'validation'), key)
  assert beam.info.metadata['skipped_files'] == [str(bad)]
  assert sequential.info.metadata == beam.info.metadata
