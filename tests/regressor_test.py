"""Tests for deepskeleton_jax.models.regressor (PoseRegressor, Direct RGB)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitting_util  # tests/fitting_util.py

from deepskeleton_jax.models import regressor

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


@functools.lru_cache(maxsize=None)
def _tiny(in_channels=6, dtype=jnp.float32):
  model = regressor.PoseRegressor(**TINY, in_channels=in_channels, dtype=dtype)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((2, 64, 64, in_channels)))
  return model, variables


def _batch(in_channels, seed=0, batch=4, size=64):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jax.random.uniform(k1, (batch, size, size, in_channels))
  # Targets of order one (as after the trainer's normalisation).
  y = jax.random.normal(k2, (batch, 16, 3))
  return x, y


@pytest.mark.parametrize('in_channels', [6, 3])
def test_full_size_shapes(in_channels):
  model = regressor.PoseRegressor(in_channels=in_channels)
  out, variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0),
                                     jnp.zeros((2, 224, 224, in_channels)),
                                     train=False))
  assert out.shape == (2, 16, 3) and out.dtype == jnp.float32
  n = sum(x.size for x in jax.tree.leaves(variables['params']['backbone']))
  assert n == 23_508_032 + (in_channels - 3) * 7 * 7 * 64
  assert variables['params']['fc']['kernel'].shape == (2048, 48)


def test_initial_outputs_are_small():
  model, variables = _tiny()
  x, _ = _batch(6)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert out.shape == (4, 16, 3)
  assert np.abs(out).max() < 0.1


def test_pose_loss_matches_numpy():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 3, 16, 3)).astype(np.float32)
  dist = np.sqrt(((pred - target) ** 2).sum(-1))
  np.testing.assert_allclose(regressor.pose_loss(pred, target), dist.mean(),
                             rtol=1e-6)
  w = rng.uniform(size=(3, 16)).astype(np.float32)
  np.testing.assert_allclose(regressor.pose_loss(pred, target, w),
                             (w * dist).sum() / w.sum(), rtol=1e-6)
  per_sample = np.array([1.0, 0.0, 1.0], np.float32)
  np.testing.assert_allclose(regressor.pose_loss(pred, target, per_sample),
                             dist[[0, 2]].mean(), rtol=1e-6)
  assert float(regressor.pose_loss(pred, target, np.zeros(3))) == 0.0
  with pytest.raises(ValueError, match='weights'):
    regressor.pose_loss(pred, target, np.ones((16,)))


def test_pose_loss_gradient_is_finite_at_zero_error():
  pred = jnp.ones((2, 16, 3))
  grad = jax.grad(regressor.pose_loss)(pred, pred)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('in_channels', [6, 3])
def test_loss_decreases_on_fixed_batch(in_channels):
  model, variables = _tiny(in_channels)
  x, y = _batch(in_channels, seed=in_channels)
  losses = fitting_util.adam_losses(model, variables, x,
                                     lambda out: regressor.pose_loss(out, y), 8)
  assert losses[-1] < 0.8 * losses[0], losses


def test_bfloat16_path():
  model, variables = _tiny(dtype=jnp.bfloat16)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  x, y = _batch(6)

  def loss_fn(params):
    out, _ = model.apply({'params': params,
                          'batch_stats': variables['batch_stats']}, x,
                         train=True, mutable=['batch_stats'])
    assert out.dtype == jnp.float32
    return regressor.pose_loss(out, y)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert np.isfinite(loss)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('shape, match', [
    ((1, 64, 64, 3), 'in_channels=6'),
    ((1, 64, 100, 6), 'multiples of 32'),
])
def test_bad_input_raises(shape, match):
  model = regressor.PoseRegressor(**TINY)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                      train=False))
