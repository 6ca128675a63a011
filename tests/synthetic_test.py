"""Tests of the synthetic dataset: a tiny build and independent checks."""

import logging

import ml_collections
import numpy as np
import pytest

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.data import registry
from deepskeleton_jax.geometry import skeleton

pose_sampler = registry.load_module('synthetic', 'pose_sampler')
synthetic_render = registry.load_module('synthetic', 'synthetic_render')
synthetic = registry.load_module('synthetic', 'synthetic')

TINY = {'num_train': 16, 'num_test': 8, 'num_poses': 8, 'crop_size': 64, 'seed': 3}


def _config(data_dir, **kwargs):
  return ml_collections.ConfigDict({
      'name': 'synthetic', 'data_dir': str(data_dir), 'manual_dir': '',
      'builder_kwargs': {**TINY, **kwargs}})


def _read(cfg, split):
  source = registry.data_source(cfg, split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  cfg = _config(tmp_path_factory.mktemp('tfds'))
  registry.prepare(cfg)
  return cfg


def test_splits_and_fields(built):
  train, test = _read(built, 'train'), _read(built, 'test')
  assert (len(train), len(test)) == (16, 8)
  for ex in train + test:
    assert ex['image'].shape == (64, 64, 3) and ex['image'].dtype == np.uint8
    assert ex['has_3d'] and ex['has_intrinsics'] and ex['visible'].all()
    np.testing.assert_allclose(ex['crop_to_image'], [[1, 0, 0], [0, 1, 0]], atol=1e-5)
    assert ex['crop_scale'] == pytest.approx(1.5)
    assert ex['action'].decode() in pose_sampler.POSE_FAMILIES
    assert ex['camera'].decode() in pose_sampler.VIEW_NAMES
    assert np.all(ex['joints_3d'][:, 2] > 1000)  # In front of the camera, mm.
    assert 0 < ex['head_size'] < 64
  assert sorted(int(ex['frame']) for ex in train) == list(range(16))
  train_people = {ex['subject'] for ex in train}
  assert train_people.isdisjoint({ex['subject'] for ex in test})


def test_poses_split_is_image_free_and_other_people(built, tmp_path):
  poses = _read(built, 'poses')
  assert len(poses) == 8
  for ex in poses:
    assert ex['image'].shape[:2] == (1, 1) and not ex['image'].any()
    assert ex['has_3d'] and ex['has_intrinsics'] and ex['visible'].all()
    assert ex['image_name'].decode().startswith('poses/')
  people = {ex['subject'] for ex in poses}
  assert people.isdisjoint({ex['subject'] for ex in _read(built, 'train') + _read(built, 'test')})
  # num_poses = 0 (the default) writes no such split.
  without = _config(tmp_path, num_poses=0)
  registry.prepare(without)
  assert 'poses' not in registry.get_builder(without).info.splits


@pytest.mark.parametrize('index', [0, 5, 21])
def test_image_free_examples_have_the_labels_a_rendered_crop_would_have(index):
  rendered = synthetic.make_synthetic_example(3, 'train', index, 64, 60.0, (0.0, 20.0))
  free = synthetic.make_synthetic_example(3, 'train', index, 64, 60.0, (0.0, 20.0),
                                          image=False)
  for key, value in rendered.items():
    if key != 'image':
      np.testing.assert_array_equal(free[key], value, err_msg=key)
  assert free['image'] != rendered['image']


def test_joints_2d_are_the_projection_of_joints_3d(built):
  for ex in _read(built, 'train') + _read(built, 'poses'):
    intr = ex['intrinsics'].astype(np.float64)
    proj = camera.project(ex['joints_3d'].astype(np.float64), intr[:2], intr[2:])
    np.testing.assert_allclose(proj, ex['joints_2d'], atol=2e-3)
    assert np.all((ex['joints_2d'] >= 0) & (ex['joints_2d'] <= 64))


def test_head_size_matches_projected_head_length(built):
  for ex in _read(built, 'train'):
    top, neck = ex['joints_3d'][9], ex['joints_3d'][8]
    depth = 0.5 * (top[2] + neck[2])
    side = ex['intrinsics'][0] * np.linalg.norm(top - neck) / depth
    assert ex['head_size'] == pytest.approx(0.6 * np.sqrt(2) * side, rel=1e-4)


def test_bone_lengths_constant_per_person_and_anthropometric(built):
  examples = _read(built, 'train') + _read(built, 'test')
  by_person = {}
  for ex in examples:
    a, b = np.array(skeleton.BONES).T
    lengths = np.linalg.norm(ex['joints_3d'][a] - ex['joints_3d'][b], axis=-1)
    by_person.setdefault(ex['subject'], []).append(lengths)
  assert len(by_person) == 2  # 16 examples per person.
  for lengths in by_person.values():
    lengths = np.array(lengths)
    np.testing.assert_allclose(lengths, lengths[:1].repeat(len(lengths), 0), rtol=1e-4)
    names = dict(zip(skeleton.BONE_NAMES, lengths[0]))
    for limb in ('thigh', 'shin'):
      assert 300 < names['l_' + limb] < 560
      assert names['l_' + limb] == pytest.approx(names['r_' + limb], rel=1e-4)
    assert 200 < names['l_upper_arm'] < 380 and 180 < names['l_forearm'] < 340
    height = (names['l_shin'] + names['l_thigh'] + names['spine'] + names['neck']
              + names['head'])
    assert 1250 < height < 2000


def test_build_is_deterministic_per_seed(built, tmp_path):
  again = _config(tmp_path / 'again')
  registry.prepare(again)
  other = _config(tmp_path / 'other', seed=4)
  registry.prepare(other)
  for split in ('train', 'test'):
    first = {int(ex['frame']): ex for ex in _read(built, split)}
    second = {int(ex['frame']): ex for ex in _read(again, split)}
    assert first.keys() == second.keys()
    for k, ex in first.items():
      for field, value in ex.items():
        np.testing.assert_array_equal(value, second[k][field], err_msg=field)
  a = sorted((int(e['frame']), e['joints_3d'].tobytes()) for e in _read(built, 'train'))
  b = sorted((int(e['frame']), e['joints_3d'].tobytes()) for e in _read(other, 'train'))
  assert all(x != y for x, y in zip(a, b))


def _segment_distance(points, a, b):
  """Distance from [P, 2] points to the segment a-b (brute force)."""
  ab = b - a
  t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
  return np.linalg.norm(points - (a + t[:, None] * ab), axis=-1)


@pytest.mark.parametrize('seed', range(4))
def test_limbs_are_drawn_where_the_joints_project(seed):
  size = 96
  person_rng = np.random.default_rng([seed, 1])
  person = pose_sampler.sample_person(person_rng)
  look = synthetic_render.sample_appearance(person_rng)
  sample = synthetic_render.render_sample(
      np.random.default_rng([seed, 2]), person, look, size, 1.5)
  background = synthetic_render.render_sample(
      np.random.default_rng([seed, 2]), person, look, size, 1.5, draw_person=False)
  np.testing.assert_array_equal(sample.joints_2d, background.joints_2d)
  diff = np.abs(sample.image.astype(np.float32) - background.image).sum(-1)
  # Near every bone's midpoint the person covers the background.
  changed = []
  for a, b in skeleton.BONES:
    x, y = (0.5 * (sample.joints_2d[a] + sample.joints_2d[b])).astype(int)
    changed.append(diff[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].mean() > 12)
  assert sum(changed) >= 13, changed
  # Far from every bone (beyond body radius, hands, feet and blur) nothing changed.
  ys, xs = np.mgrid[:size, :size]
  centres = np.stack([xs.ravel(), ys.ravel()], -1) + 0.5
  dist = np.min([_segment_distance(centres, sample.joints_2d[a], sample.joints_2d[b])
                 for a, b in skeleton.BONES], axis=0).reshape(size, size)
  fx = sample.intrinsics[0]
  reach = fx * 0.2 * person.height / sample.joints_3d[:, 2].min() + 4
  far = dist > reach
  assert far.mean() > 0.2
  assert np.all(diff[far] == 0)
  assert diff[dist < 1].mean() > 12


def test_invalid_examples_are_rejected_and_counted(tmp_path, monkeypatch, caplog):
  real = synthetic_render.render_sample
  calls = {'n': 0}

  def broken(*args, **kwargs):
    sample = real(*args, **kwargs)
    calls['n'] += 1
    if calls['n'] in (2, 5):
      sample.joints_3d[3] = np.nan
      sample.joints_2d[3] = np.nan
    return sample

  monkeypatch.setattr(synthetic_render, 'render_sample', broken)
  builder = registry.get_builder(_config(tmp_path, num_train=6))
  with caplog.at_level(logging.INFO):
    examples = list(builder._generate_examples('train'))
  assert [k for k, _ in examples] == [0, 2, 3, 5]
  assert any('4 examples written, 2 rejected' in r.getMessage() for r in caplog.records)


def test_bad_options_fail_before_writing(tmp_path):
  with pytest.raises(ValueError, match='builder_kwargs.crop_size must be >= 16'):
    registry.prepare(_config(tmp_path / 'data', crop_size=4))
  assert not (tmp_path / 'data').exists()
