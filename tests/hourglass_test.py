"""Tests for deepskeleton_jax.models.hourglass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def _soft_argmax_numpy(maps):
  """Per map: softmax over pixels, mean pixel centre, best 3x3 window mass."""
  b, h, w, k = maps.shape
  joints = np.zeros((b, k, 2))
  conf = np.zeros((b, k))
  for n in range(b):
    for j in range(k):
      logits = maps[n, :, :, j].astype(np.float64)
      p = np.exp(logits - logits.max())
      p /= p.sum()
      for i in range(h):
        for c in range(w):
          joints[n, j] += p[i, c] * np.array([c + 0.5, i + 0.5])
          conf[n, j] = max(conf[n, j], p[max(i - 1, 0):i + 2, max(c - 1, 0):c + 2].sum())
  return joints, conf


def test_soft_argmax_brute_force():
  rng = np.random.default_rng(7)
  maps = (3.0 * rng.normal(size=(2, 6, 5, 3))).astype(np.float32)
  joints, conf = hourglass.soft_argmax(maps)
  want_joints, want_conf = _soft_argmax_numpy(maps)
  np.testing.assert_allclose(joints, want_joints, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conf, want_conf, rtol=1e-5, atol=1e-6)


def test_soft_argmax_confidence_extremes():
  flat = np.zeros((1, 16, 16, 2), np.float32)
  flat[0, 7, 3, 1] = 60.0   # one sharp peak: the pixel's centre, confidence 1
  joints, conf = hourglass.soft_argmax(flat)
  np.testing.assert_allclose(joints[0, 0], [8.0, 8.0], atol=1e-5)  # flat: the middle
  np.testing.assert_allclose(conf[0, 0], 9 / 256, rtol=1e-5)
  np.testing.assert_allclose(joints[0, 1], [3.5, 7.5], atol=1e-4)
  np.testing.assert_allclose(conf[0, 1], 1.0, atol=1e-5)


def test_integral_loss_brute_force_and_masking():
  rng = np.random.default_rng(8)
  preds = [rng.normal(size=(3, 8, 8, 16)).astype(np.float32) for _ in range(2)]
  joints = rng.uniform(0, 8, (3, 16, 2)).astype(np.float32)
  visible = rng.uniform(size=(3, 16)) > 0.3
  want = np.mean([
      np.abs(_soft_argmax_numpy(p)[0] - joints)[visible].mean() for p in preds])
  got = hourglass.integral_loss(preds, joints, visible)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  changed = [p + 5.0 * rng.normal(size=p.shape) * (~visible)[:, None, None, :]
             for p in preds]
  np.testing.assert_allclose(
      hourglass.integral_loss(changed, joints, visible), got, rtol=1e-6)


def test_integral_loss_trains_logits_towards_the_joint():
  """Gradient descent on the logits alone moves the soft-argmax to the target."""
  target = np.array([[[2.3, 5.8]]], np.float32)
  grad = jax.jit(jax.grad(lambda m: hourglass.integral_loss([m], target,
                                                          np.ones((1, 1), bool))))
  maps = jnp.zeros((1, 8, 8, 1))  # flat: the soft-argmax starts at (4, 4), 3.5 px off
  for _ in range(300):
    maps = maps - grad(maps)
  error = np.abs(np.asarray(hourglass.soft_argmax(maps)[0][0, 0]) - target[0, 0])
  assert error.sum() < 0.1, error
