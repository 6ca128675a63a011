"""Tests for deepskeleton_jax.models.hourglass."""

import functools
import json

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.io

from deepskeleton_jax.models import hourglass

TINY = dict(num_stacks=2, num_features=16, depth=2)


def _residual_params(cin, cout):
  m = cout // 2
  n = 2 * cin + cin * m + m + 2 * m + 9 * m * m + m + 2 * m + m * cout + cout
  return n + (cin * cout + cout if cin != cout else 0)


def _hourglass_params(depth, f):
  inner = (_hourglass_params(depth - 1, f) if depth > 1
           else _residual_params(f, f))
  return 3 * _residual_params(f, f) + inner


def _expected_params(stacks, f, k, depth):
  """Parameter count of Newell's architecture, layer by layer."""
  n = 7 * 7 * 3 * 64 + 64 + 2 * 64
  n += _residual_params(64, 128) + _residual_params(128, 128)
  n += _residual_params(128, f)
  for s in range(stacks):
    n += _hourglass_params(depth, f) + _residual_params(f, f)
    n += f * f + f + 2 * f + f * k + k
    if s < stacks - 1:
      n += f * f + f + k * f + f
  return n


def test_full_size_shapes_and_parameter_count():
  model = hourglass.StackedHourglass(num_stacks=2, num_features=256)
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  assert len(out) == 2
  for hm in out:
    assert hm.shape == (2, 64, 64, 16) and hm.dtype == jnp.float32
  count = sum(np.prod(p.shape) for p in jax.tree.leaves(variables['params']))
  assert count == _expected_params(2, 256, 16, 4)
  assert set(variables) == {'params', 'batch_stats'}


def test_rejects_indivisible_input():
  model = hourglass.StackedHourglass(**TINY)
  with pytest.raises(ValueError, match='divisible by 16'):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   jax.ShapeDtypeStruct((1, 40, 40, 3), jnp.float32))


@pytest.fixture(scope='module')
def tiny():
  """A tiny model, its variables, a fixed batch and one jitted Adam step."""
  model = hourglass.StackedHourglass(**TINY)
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), images)
  rng = np.random.default_rng(0)
  joints = rng.uniform(0, 8, (4, 16, 2)).astype(np.float32)
  visible = rng.uniform(size=(4, 16)) > 0.2
  targets = hourglass.heatmap_targets(joints, visible, 8)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, stats, opt_state):
    def loss_fn(params):
      out, updates = model.apply({'params': params, 'batch_stats': stats},
                                 images, train=True, mutable=['batch_stats'])
      return hourglass.heatmap_loss(out, targets, visible), (out, updates)
    (loss, (out, updates)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    upd, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, upd), updates['batch_stats'],
            opt_state, loss, grads, out)

  return variables, images, tx, step


def test_tiny_forward_backward(tiny):
  variables, _, tx, step = tiny
  params = variables['params']
  _, stats, _, loss, grads, out = step(params, variables['batch_stats'],
                                       tx.init(params))
  assert [o.shape for o in out] == [(4, 8, 8, 16)] * 2
  assert np.isfinite(loss)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > len(norms) // 2
  # Every stack's head receives gradient (intermediate supervision).
  assert float(jnp.abs(grads['head0']['kernel']).sum()) > 0
  old = variables['batch_stats']['stem_bn']['mean']
  assert not np.allclose(stats['stem_bn']['mean'], old)


def test_loss_decreases(tiny):
  variables, _, tx, step = tiny
  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  losses = []
  for _ in range(8):
    params, stats, opt_state, loss, _, _ = step(params, stats, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_bfloat16_compute_returns_float32(tiny):
  variables, images, _, _ = tiny
  model = hourglass.StackedHourglass(**TINY, dtype=jnp.bfloat16)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  assert all(o.dtype == jnp.float32 for o in out)
  assert all(np.isfinite(np.asarray(o)).all() for o in out)


def test_heatmap_targets_brute_force():
  rng = np.random.default_rng(2)
  joints = rng.uniform(-2, 14, (2, 16, 2))
  visible = rng.uniform(size=(2, 16)) > 0.3
  sigma = 1.5
  got = np.asarray(hourglass.heatmap_targets(joints, visible, 12, sigma))
  want = np.zeros((2, 12, 12, 16))
  for b in range(2):
    for k in range(16):
      if not visible[b, k]:
        continue
      for i in range(12):
        for j in range(12):
          d2 = (j + 0.5 - joints[b, k, 0])**2 + (i + 0.5 - joints[b, k, 1])**2
          want[b, i, j, k] = np.exp(-d2 / (2 * sigma**2))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_heatmap_loss_brute_force_and_masking():
  rng = np.random.default_rng(3)
  targets = rng.uniform(size=(2, 5, 5, 16)).astype(np.float32)
  preds = [rng.uniform(size=(2, 5, 5, 16)).astype(np.float32) for _ in range(3)]
  visible = rng.uniform(size=(2, 16)) > 0.4
  want = np.mean([np.mean(((p - targets)**2).transpose(0, 3, 1, 2)[visible])
                  for p in preds])
  got = hourglass.heatmap_loss(preds, targets, visible)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Predictions for invisible joints do not matter.
  changed = [p + 5.0 * (~visible)[:, None, None, :] for p in preds]
  np.testing.assert_allclose(
      hourglass.heatmap_loss(changed, targets, visible), got, rtol=1e-6)


@pytest.mark.parametrize('size,sigma', [(64, 1.0), (16, 2.0), (9, 0.7)])
def test_decode_round_trip(size, sigma):
  rng = np.random.default_rng(size)
  joints = rng.uniform(0, size, (8, 16, 2)).astype(np.float32)
  joints[0, :4] = [[0, 0], [size - 1e-3, 0.3], [0.5, size - 0.5], [1.0, 2.5]]
  maps = hourglass.heatmap_targets(joints, np.ones((8, 16), bool), size, sigma)
  decoded, confidence = hourglass.decode_heatmaps(maps)
  np.testing.assert_allclose(decoded, joints, atol=0.1)
  np.testing.assert_allclose(confidence, np.asarray(maps).max(axis=(1, 2)))


def test_decode_stays_in_argmax_pixel_for_noisy_maps():
  rng = np.random.default_rng(4)
  maps = rng.normal(size=(3, 10, 12, 16)).astype(np.float32)
  decoded, _ = hourglass.decode_heatmaps(maps)
  flat = maps.transpose(0, 3, 1, 2).reshape(3, 16, -1).argmax(-1)
  row, col = flat // 12, flat % 12
  x, y = np.asarray(decoded[..., 0]), np.asarray(decoded[..., 1])
  assert np.all((x >= col) & (x <= col + 1) & (y >= row) & (y <= row + 1))


def _pckh_per_joint(pred, gt_file):
  """Official MPII PCKh@0.5 per joint, from the evaluation .mat directly."""
  gt = scipy.io.loadmat(gt_file)
  pos = gt['pos_gt_src'].transpose(2, 0, 1)
  valid = gt['jnt_missing'].T == 0
  boxes = gt['headboxes_src']
  head = 0.6 * np.linalg.norm(boxes[1] - boxes[0], axis=0)
  dist = np.linalg.norm(pred - pos, axis=-1) / head[:, None]
  return 100 * ((dist <= 0.5) & valid).sum(0) / valid.sum(0)


def test_load_bearpaw_mat_reproduces_published_pckh(shared_data):
  folder = shared_data / 'mpii_eval'
  preds = hourglass.load_detections(folder / 'bearpaw-hg_s8_b1.mat')
  assert preds.shape == (2958, 16, 2) and preds.dtype == np.float32
  pck = _pckh_per_joint(preds, folder / 'gt_valid_tompson_format.mat')
  groups = {9: 96.79, (12, 13): 95.19, (11, 14): 90.08, (10, 15): 85.32,
            (2, 3): 87.48, (1, 4): 84.26, (0, 5): 80.73}
  for joints, published in groups.items():
    assert abs(np.mean(pck[list(np.atleast_1d(joints))]) - published) < 0.01


def test_load_h5_files(shared_data):
  folder = shared_data / 'mpii_eval'
  gt_file = folder / 'gt_valid_tompson_format.mat'
  newell = hourglass.load_detections(folder / 'newell.h5')
  tompson, scores = hourglass.load_detections(folder / 'tompson.h5',
                                              return_scores=True)
  assert newell.shape == tompson.shape == (2958, 16, 2) and scores is None
  # Right orientation (no x/y or person/joint mix-up): high head-top PCKh.
  assert _pckh_per_joint(newell, gt_file)[9] > 95
  assert _pckh_per_joint(tompson, gt_file)[9] > 95
  part, visible = hourglass.load_detections(folder / 'valid.h5',
                                            return_scores=True)
  gt = scipy.io.loadmat(gt_file)
  present = gt['jnt_missing'].T == 0
  # valid.h5 rounds to whole pixels and differs on a few joints.
  diff = np.abs(part - gt['pos_gt_src'].transpose(2, 0, 1))[present]
  assert np.mean(diff.max(-1) <= 1.0) > 0.95
  with h5py.File(folder / 'valid.h5') as f:
    np.testing.assert_array_equal(visible, f['visible'][()])


def test_formats_agree(shared_data, tmp_path):
  raw = scipy.io.loadmat(shared_data / 'mpii_eval' / 'bearpaw-hg_s8_b1.mat')
  preds = np.asarray(raw['preds'], np.float32)
  scores = np.random.default_rng(5).uniform(size=preds.shape[:2])
  ref = hourglass.load_detections(shared_data / 'mpii_eval' /
                                  'bearpaw-hg_s8_b1.mat')
  np.save(tmp_path / 'a.npy', preds)
  np.savez(tmp_path / 'b.npz', preds=preds, scores=scores)
  (tmp_path / 'c.json').write_text(json.dumps(preds.tolist()))
  (tmp_path / 'd.json').write_text(
      json.dumps({'preds': preds.tolist(), 'scores': scores.tolist()}))
  (tmp_path / 'e.json').write_text(json.dumps(
      [{'joints': p.tolist(), 'joints_vis': [1] * 16} for p in preds[:5]]))
  scipy.io.savemat(tmp_path / 'f.mat',
                   {'pos_pred_src': preds.transpose(1, 2, 0)})
  with h5py.File(tmp_path / 'g.h5', 'w') as f:
    f['preds'] = preds.transpose(2, 1, 0)  # A column-major (MATLAB) dump.
  for name in 'a.npy', 'b.npz', 'c.json', 'd.json', 'f.mat', 'g.h5':
    np.testing.assert_array_equal(hourglass.load_detections(tmp_path / name),
                                  ref, err_msg=name)
  for name in 'b.npz', 'd.json':
    _, got = hourglass.load_detections(tmp_path / name, return_scores=True)
    np.testing.assert_allclose(got, scores, rtol=1e-6, err_msg=name)
  joints, vis = hourglass.load_detections(tmp_path / 'e.json',
                                          return_scores=True)
  np.testing.assert_array_equal(joints, ref[:5])
  np.testing.assert_array_equal(vis, np.ones((5, 16)))


def test_bad_files_raise(tmp_path):
  cases = {
      'short.npy': lambda p: np.save(p, np.zeros((3, 15, 2))),
      'noname.npz': lambda p: np.savez(p, a=np.zeros((3, 16, 2)), b=np.ones(3)),
      'garbage.mat': lambda p: p.write_bytes(b'not a mat file at all' * 10),
      'garbage.h5': lambda p: p.write_bytes(b'not hdf5'),
      'ragged.json': lambda p: p.write_text('[[[1, 2]], [[1, 2], [3, 4]]]'),
      'badscores.npz': lambda p: np.savez(p, preds=np.zeros((3, 16, 2)),
                                          scores=np.zeros((3, 15))),
      'x.txt': lambda p: p.write_text('1 2'),
  }
  for name, write in cases.items():
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=name):
      hourglass.load_detections(path, return_scores=True)
  bad = tmp_path / 'badfield.json'
  bad.write_text(json.dumps({'preds': np.zeros((4, 16, 3)).tolist()}))
  with pytest.raises(ValueError, match="badfield.json: field 'preds' has"):
    hourglass.load_detections(bad)
  with pytest.raises(FileNotFoundError):
    hourglass.load_detections(tmp_path / 'missing.mat')
