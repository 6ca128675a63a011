"""Tests for deepskeleton_jax.models.lifting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.models import lifting

ROOT = skeleton.ROOT


def _poses(n, seed):
  rng = np.random.default_rng(seed)
  joints = rng.normal(scale=60.0, size=(n, 16, 2))
  joints += rng.uniform(0, 500, (n, 1, 2))
  visible = rng.uniform(size=(n, 16)) > 0.25
  return joints.astype(np.float32), visible


def test_normalize_2d_invariance_and_brute_force():
  joints, visible = _poses(6, 0)
  visible[1, ROOT] = False  # Centred on the mean of the visible joints.
  visible[2] = False  # Nothing visible.
  visible[2, ROOT] = True  # Only the root: scale falls back to 1.
  rng = np.random.default_rng(1)
  scale = rng.uniform(0.2, 5.0, (6, 1, 1))
  shift = rng.uniform(-1000, 1000, (6, 1, 2))
  a = np.asarray(lifting.normalize_2d(joints, visible))
  b = np.asarray(lifting.normalize_2d(joints * scale + shift, visible))
  np.testing.assert_allclose(a, b, atol=1e-4)
  assert a.shape == (6, 16, 3)
  np.testing.assert_array_equal(a[..., 2], visible)
  assert np.all(a[..., :2][~visible] == 0)
  for p in range(6):
    vis = visible[p]
    centre = joints[p, ROOT] if vis[ROOT] else joints[p][vis].mean(0)
    others = vis & (np.arange(16) != ROOT)
    size = (np.median(np.linalg.norm(joints[p][others] - centre, axis=-1))
            if others.any() else 1.0)
    want = (joints[p] - centre) / size * vis[:, None]
    np.testing.assert_allclose(a[p, :, :2], want, rtol=1e-4, atol=1e-5)


def test_normalize_2d_rejects_bad_visibility():
  with pytest.raises(ValueError, match='visible'):
    lifting.normalize_2d(np.zeros((2, 16, 2)), np.ones((2, 15), bool))


@pytest.fixture(scope='module')
def tiny():
  model = lifting.LiftingMLP(hidden=32, num_blocks=2, dropout_rate=0.5)
  joints, visible = _poses(16, 2)
  x = lifting.normalize_2d(joints, visible)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), x)
  return model, variables, x


def test_shapes_and_root_relative(tiny):
  model, variables, x = tiny
  out = model.apply(variables, x, train=False)
  assert out.shape == (16, 16, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out[:, ROOT], 0.0)
  # Two-channel input is taken as all visible (same parameters).
  all_vis = jnp.concatenate([x[..., :2], jnp.ones_like(x[..., 2:])], -1)
  np.testing.assert_allclose(model.apply(variables, x[..., :2], train=False),
                             model.apply(variables, all_vis, train=False))
  with pytest.raises(ValueError, match='joints_2d'):
    model.apply(variables, x[:, :15], train=False)


def test_dropout_only_in_train_mode(tiny):
  model, variables, x = tiny
  apply = jax.jit(functools.partial(model.apply, mutable=['batch_stats']),
                  static_argnames='train')
  keys = jax.random.split(jax.random.key(3), 2)
  eval_a, _ = apply(variables, x, train=False, rngs={'dropout': keys[0]})
  eval_b, _ = apply(variables, x, train=False, rngs={'dropout': keys[1]})
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = apply(variables, x, train=True, rngs={'dropout': keys[0]})
  train_a2, _ = apply(variables, x, train=True, rngs={'dropout': keys[0]})
  train_b, _ = apply(variables, x, train=True, rngs={'dropout': keys[1]})
  np.testing.assert_array_equal(train_a, train_a2)
  assert not np.allclose(train_a, train_b)
  no_dropout = lifting.LiftingMLP(hidden=32, num_blocks=2, dropout_rate=0.0)
  np.testing.assert_array_equal(
      no_dropout.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': keys[0]})[0],
      no_dropout.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': keys[1]})[0])
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, x, train=True, mutable=['batch_stats'])


def test_loss_decreases(tiny):
  model, variables, x = tiny
  target = jax.random.normal(jax.random.key(4), (16, 16, 3))
  target = target - target[:, ROOT:ROOT + 1]
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, stats, opt_state, key):
    def loss_fn(params):
      out, updates = model.apply({'params': params, 'batch_stats': stats}, x,
                                 train=True, mutable=['batch_stats'],
                                 rngs={'dropout': key})
      return jnp.mean((out - target)**2), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, upd), updates['batch_stats'],
            opt_state, loss)

  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  losses = []
  for key in jax.random.split(jax.random.key(5), 60):
    params, stats, opt_state, loss = step(params, stats, opt_state, key)
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
