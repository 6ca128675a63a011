"""Tests of the grain input pipeline: crop geometry, augmentation, sharding, state."""

import collections
import json

from absl import flags
import ml_collections
import numpy as np
import pytest

from deepskeleton_jax.geometry import camera
from deepskeleton_jax.data import registry
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.geometry import skeleton

R_WRIST, L_WRIST = skeleton.JOINT_INDEX['r_wrist'], skeleton.JOINT_INDEX['l_wrist']


def _data_config(data_dir, **kwargs):
  cfg = ml_collections.ConfigDict({
      'name': 'synthetic', 'data_dir': str(data_dir), 'manual_dir': '',
      'builder_kwargs': {'num_train': 12, 'num_test': 10, 'num_poses': 8, 'crop_size': 64},
      'train_split': 'train', 'eval_split': 'test',
      'crop_scales': (1.0, 1.25, 1.5), 'input_size': 32, 'augment': False,
      'worker_count': 0, 'seed': 0})
  cfg.update(kwargs)
  return cfg


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  registry.prepare(_data_config(path))
  return path


def _example(crop=90, rng=None):
  """A stored example with consistent 3D joints, intrinsics and joint markers."""
  rng = rng or np.random.default_rng(0)
  intr = np.array([110.0, 110.0, 41.0, 47.0])
  joints_3d = np.column_stack([rng.uniform(-600, 600, (16, 2)),
                               rng.uniform(3500, 4500, 16)])
  joints_2d = camera.project(joints_3d, intr[:2], intr[2:])
  image = np.zeros((crop, crop, 3), np.uint8)
  for j, colour in ((R_WRIST, (255, 0, 0)), (L_WRIST, (0, 255, 0))):
    # A 5x5 block centred on the joint, which sits at a pixel centre.
    x, y = joints_2d[j].astype(int)
    image[y - 2:y + 3, x - 2:x + 3] = colour
    joints_2d[j] = (x + 0.5, y + 0.5)
    joints_3d[j, :2] = (joints_2d[j] - intr[2:]) * joints_3d[j, 2] / intr[:2]
  return {
      'image': image,  # Undecoded (JPEG chroma subsampling would blur it).
      'crop_to_image': np.array([[3.0, 0, 100], [0, 3.0, -20]], np.float32),
      'crop_scale': np.float32(1.5),
      'joints_2d': joints_2d.astype(np.float32),
      'visible': np.ones(16, bool),
      'joints_3d': joints_3d.astype(np.float32),
      'has_3d': True, 'intrinsics': intr.astype(np.float32), 'has_intrinsics': True,
      'head_size': np.float32(20.0),
      'subject': b'S1', 'action': b'Walk', 'camera': b'front', 'image_name': b'x/1',
  }


def test_crop_scale_geometry():
  scales, size, crop = (1.0, 1.25, 1.5), 48, 90
  ex = _example(crop)
  ex['joints_2d'][0] = (45.0, 45.0)          # The box centre.
  ex['joints_2d'][1] = (45.0 + 12, 45.0 - 6)
  out = input_pipeline.ExampleTransform(scales, size)(ex, index=7)
  assert out['image'].shape == (3, size, size, 3) and out['index'] == 7 and out['mask']
  for i, c in enumerate(scales):
    zoom = size / (crop * c / 1.5)           # Input px per stored-crop px.
    np.testing.assert_allclose(out['joints_2d'][i, 0], (size / 2, size / 2), atol=1e-4)
    np.testing.assert_allclose(out['joints_2d'][i, 1] - size / 2,
                               np.array([12, -6]) * zoom, atol=1e-4)
    np.testing.assert_allclose(out['head_size'][i], 20 * zoom, rtol=1e-5)
    np.testing.assert_allclose(out['intrinsics'][i, :2], 110 * zoom, rtol=1e-5)
    # input -> original image == crop -> original image after input -> crop.
    original = camera.apply_affine(ex['joints_2d'].astype(np.float64), ex['crop_to_image'])
    np.testing.assert_allclose(
        camera.apply_affine(out['joints_2d'][i].astype(np.float64),
                            out['input_to_image'][i]), original, atol=1e-2)
  # Scale 1.5 is the whole stored crop.
  np.testing.assert_allclose(out['joints_2d'][2], ex['joints_2d'] * size / crop, atol=1e-4)


def _centroid(image, channel):
  """Centre of mass of the pixels where `channel` dominates (pixel centres)."""
  img = image.astype(np.float64)
  weight = np.clip(img[..., channel] - img[..., 1 - channel] - 40, 0, None)
  ys, xs = np.mgrid[:image.shape[0], :image.shape[1]] + 0.5
  return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def test_augmentation_moves_image_joints_and_3d_together():
  transform = input_pipeline.ExampleTransform((1.0, 1.5), 64)
  ex = _example()
  bones = np.array(skeleton.BONES).T
  lengths = np.linalg.norm(ex['joints_3d'][bones[0]] - ex['joints_3d'][bones[1]], axis=-1)
  flips = []
  for seed in range(24):
    out = transform(ex, 0, np.random.default_rng(seed))
    flipped = np.linalg.det(out['input_to_image'][0, :, :2]) < 0
    flips.append(flipped)
    for i in range(2):
      proj = camera.project_intrinsics(out['joints_3d'].astype(np.float64),
                                       out['intrinsics'][i].astype(np.float64))
      np.testing.assert_allclose(proj, out['joints_2d'][i], atol=2e-3)
      # The red block marks the right wrist, the green one the left; after a
      # flip the person's right wrist is the mirrored left one (green).
      red, green = _centroid(out['image'][i], 0), _centroid(out['image'][i], 1)
      right, left = (green, red) if flipped else (red, green)
      np.testing.assert_allclose(right, out['joints_2d'][i, R_WRIST], atol=0.25)
      np.testing.assert_allclose(left, out['joints_2d'][i, L_WRIST], atol=0.25)
    new = out['joints_3d']
    np.testing.assert_allclose(  # A flip maps bones to their mirror bones.
        np.sort(np.linalg.norm(new[bones[0]] - new[bones[1]], axis=-1)),
        np.sort(lengths), rtol=1e-5)
    np.testing.assert_allclose(new[:, 2], ex['joints_3d'][skeleton.flip_permutation() if flipped
                                                       else np.arange(16), 2], rtol=1e-6)
  assert any(flips) and not all(flips)


def _run(cfg, split, batch, **kwargs):
  it = input_pipeline.make_iterator(cfg, split, batch, **kwargs)
  batches = list(it)
  assert len(batches) == it.num_batches
  return batches


@pytest.mark.parametrize('processes', [2, 3])
def test_processes_partition_each_epoch(data_dir, processes):
  cfg = _data_config(data_dir)
  per_process = [_run(cfg, 'test', 2 * processes, shuffle=True, num_epochs=2, seed=5,
                      process_index=p, process_count=processes)
                 for p in range(processes)]
  assert len({len(b) for b in per_process}) == 1  # Same number of steps.
  for epochs in (1, 2):
    seen = []
    for batches in per_process:
      got = np.concatenate([b['index'][b['mask']] for b in batches])
      per_epoch = len(got) // 2
      seen += list(got[:per_epoch] if epochs == 1 else got)
    assert collections.Counter(seen) == {i: epochs for i in range(10)}
  # The two epochs come in different orders, and the seed matters.
  got = np.concatenate([b['index'][b['mask']] for b in per_process[0]])
  assert not np.array_equal(got[:len(got) // 2], got[len(got) // 2:])
  other = _run(cfg, 'test', 2 * processes, shuffle=True, num_epochs=2, seed=6,
               process_index=0, process_count=processes)
  assert not np.array_equal(np.concatenate([b['index'] for b in other]),
                            np.concatenate([b['index'] for b in per_process[0]]))


def test_eval_pads_the_last_batch_with_a_mask(data_dir):
  batches = _run(_data_config(data_dir), 'test', 4, process_index=0, process_count=1)
  assert [b['mask'].tolist() for b in batches] == [[True] * 4] * 2 + [[True] * 2 + [False] * 2]
  np.testing.assert_array_equal(np.concatenate([b['index'] for b in batches]),
                                list(range(10)) + [-1, -1])
  last = batches[-1]
  assert not last['image'][2:].any() and not last['joints_3d'][2:].any()
  assert list(last['subject'][2:]) == ['', '']
  source = registry.data_source(_data_config(data_dir), 'test')
  assert last['subject'][1] == source[9]['subject'].decode()
  assert last['image'].shape == (4, 3, 32, 32, 3) and last['image'].dtype == np.uint8
  for key, shape in (('joints_2d', (4, 3, 16, 2)), ('input_to_image', (4, 3, 2, 3)),
                     ('intrinsics', (4, 3, 4)), ('head_size', (4, 3)),
                     ('visible', (4, 16)), ('joints_3d', (4, 16, 3))):
    assert last[key].shape == shape, key


def test_drop_remainder_gives_full_equal_batches(data_dir):
  cfg = _data_config(data_dir)
  runs = [_run(cfg, 'test', 4, drop_remainder=True, process_index=p, process_count=2)
          for p in range(2)]
  assert [len(r) for r in runs] == [2, 2]
  assert all(b['mask'].all() for r in runs for b in r)


def test_restored_state_continues_exactly(data_dir):
  cfg = _data_config(data_dir, augment=True)

  def make():
    return input_pipeline.make_iterator(cfg, 'train', 4, shuffle=True, num_epochs=None,
                                        process_index=0, process_count=1)

  it = make()
  for _ in range(2):  # 12 examples: stop mid-epoch.
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]  # Runs into the second epoch.
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  fresh = next(make())
  assert not np.array_equal(fresh['index'], expected[0]['index'])


@pytest.mark.parametrize('stop', [1, 3, 5])
def test_chained_iterator_switches_after_n_batches_and_resumes_in_either_phase(
    data_dir, stop):
  cfg = _data_config(data_dir)

  def make():
    stream = lambda split: input_pipeline.make_iterator(
        cfg, split, 4, shuffle=True, num_epochs=None, process_index=0, process_count=1)
    return input_pipeline.ChainedIterator(stream('poses'), 3, stream('train'))

  it = make()
  batches = [next(it) for _ in range(6)]
  for i, batch in enumerate(batches):
    split = 'poses' if i < 3 else 'train'
    assert all(n.startswith(split + '/') for n in batch['image_name']), (i, batch['image_name'])
    assert batch['image'].any() == (split == 'train')  # Image-free examples: zeros.
    assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in batches[0].items()}
  it = make()
  for _ in range(stop):
    next(it)
  resumed = make()
  resumed.set_state(json.loads(json.dumps(it.get_state())))
  for want in batches[stop:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_worker_processes_give_the_same_batches(data_dir):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cfg = _data_config(data_dir)
  want = _run(cfg, 'test', 4, shuffle=True, seed=1, process_index=0, process_count=1)
  cfg.worker_count = 2
  got = _run(cfg, 'test', 4, shuffle=True, seed=1, process_index=0, process_count=1)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_bad_arguments(data_dir):
  cfg = _data_config(data_dir)
  with pytest.raises(ValueError, match='multiple of process_count=2'):
    input_pipeline.make_iterator(cfg, 'test', 3, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='process_index'):
    input_pipeline.make_iterator(cfg, 'test', 4, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='exceed the stored crop scale'):
    input_pipeline.make_iterator(_data_config(data_dir, crop_scales=(1.0, 2.0)), 'test', 4,
                                 process_index=0, process_count=1)
  with pytest.raises(registry.DatasetNotBuiltError, match='--mode=prepare'):
    input_pipeline.make_iterator(_data_config(data_dir / 'nothing'), 'test', 4,
                                 process_index=0, process_count=1)


def test_epoch_plan_is_thread_safe_across_epoch_boundaries():
  # grain's prefetch threads read the plan concurrently, each position of
  # its own epoch; a plan caching "the" current permutation in shared state
  # would hand some threads another epoch's order.
  import sys  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  n, epochs, threads = 37, 12, 16
  plan = input_pipeline._EpochPlan(n, 0, 1, shuffle=True, seed=5, num_epochs=None,
                                   length=n * epochs)
  before = {k: v for k, v in vars(plan).items() if not k.startswith('__')}
  results = [None] * (n * epochs)
  order = np.random.default_rng(0).permutation(n * epochs)   # scattered over epochs
  chunks = np.array_split(order, threads)
  interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)
  try:
    def read(ks):
      for k in ks:
        results[k] = plan[int(k)]
    workers = [threading.Thread(target=read, args=(c,)) for c in chunks]
    for w in workers:
      w.start()
    for w in workers:
      w.join()
  finally:
    sys.setswitchinterval(interval)
  for e in range(epochs):
    got = [results[e * n + p] for p in range(n)]
    assert all(g[0] == e for g in got)
    indices = [g[1] for g in got]
    assert sorted(indices) == list(range(n)), f'epoch {e}: not every example once'
    expected = np.random.default_rng([5, e]).permutation(n)   # a pure function of (seed, epoch)
    np.testing.assert_array_equal(indices, expected)
  # Reading keeps no per-epoch state in the plan (which threads would share).
  after = {k: v for k, v in vars(plan).items() if not k.startswith('__')}
  assert after.keys() == before.keys()
  assert all(after[k] is before[k] or np.array_equal(after[k], before[k]) for k in before)
