"""Tests for deepskeleton_jax.models.hypotheses (stacked vmapped models)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.models import hypotheses
from deepskeleton_jax.models import regressor

NUM = 2
MODEL = regressor.PoseRegressor(stage_sizes=(1, 1, 1, 1), width=8)


def _slice(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@functools.lru_cache(maxsize=None)
def _stacked():
  variables = hypotheses.init_stacked(MODEL, jax.random.key(0), NUM,
                                      jnp.zeros((2, 64, 64, 6)), train=False)
  # Perturb every parameter so no block is an exact identity at init (the
  # zero-initialised last BN scales would otherwise hide per-block gradients).
  leaves, treedef = jax.tree.flatten(variables['params'])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return {'params': jax.tree.unflatten(treedef, leaves),
          'batch_stats': variables['batch_stats']}


def _inputs(seed=2):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (jax.random.uniform(k1, (NUM, 2, 64, 64, 6)),
          jax.random.normal(k2, (NUM, 2, 16, 3)))


def test_init_stacked_equals_separate_inits():
  variables = hypotheses.init_stacked(MODEL, jax.random.key(0), NUM,
                                      jnp.zeros((2, 64, 64, 6)), train=False)
  assert hypotheses.num_hypotheses(variables) == NUM
  init = jax.jit(functools.partial(MODEL.init, train=False))
  for i, key in enumerate(jax.random.split(jax.random.key(0), NUM)):
    _assert_trees_close(_slice(variables, i), init(key, jnp.zeros((2, 64, 64, 6))),
                        rtol=0, atol=0)
  kernels = variables['params']['fc']['kernel']
  assert not np.allclose(kernels[0], kernels[1])


@pytest.mark.parametrize('hyp_map', ['vmap', 'loop'])
def test_apply_stacked_train_mode_and_gradients_equal_separate_applies(hyp_map):
  variables = _stacked()
  x, y = _inputs()

  def stacked_loss(params):
    out, upd = hypotheses.apply_stacked(
        MODEL, {'params': params, 'batch_stats': variables['batch_stats']}, x,
        train=True, mutable=['batch_stats'], hyp_map=hyp_map)
    per_hyp = jax.vmap(regressor.pose_loss)(out, y)
    return per_hyp.sum(), (out, upd)

  def separate_loss(params):
    outs, upds, total = [], [], 0.0
    for i in range(NUM):
      v = {'params': _slice(params, i),
           'batch_stats': _slice(variables['batch_stats'], i)}
      out, upd = MODEL.apply(v, x[i], train=True, mutable=['batch_stats'])
      total += regressor.pose_loss(out, y[i])
      outs.append(out)
      upds.append(upd)
    return total, (jnp.stack(outs), jax.tree.map(lambda *a: jnp.stack(a), *upds))

  (loss_s, (out_s, upd_s)), grad_s = jax.jit(
      jax.value_and_grad(stacked_loss, has_aux=True))(variables['params'])
  (loss_r, (out_r, upd_r)), grad_r = jax.jit(
      jax.value_and_grad(separate_loss, has_aux=True))(variables['params'])
  assert out_s.shape == (NUM, 2, 16, 3)
  np.testing.assert_allclose(loss_s, loss_r, rtol=1e-4)
  _assert_trees_close(out_s, out_r)
  _assert_trees_close(upd_s, upd_r)
  _assert_trees_close(grad_s, grad_r, rtol=1e-3, atol=1e-5)
  # Every hypothesis gets its own non-trivial gradient.
  g = grad_s['fc']['kernel']
  assert not np.allclose(g[0], g[1])


@pytest.mark.parametrize('hyp_map', ['vmap', 'loop'])
def test_apply_stacked_eval_with_shared_input(hyp_map):
  variables = _stacked()
  x = _inputs()[0][0]
  apply = jax.jit(lambda v, x: hypotheses.apply_stacked(
      MODEL, v, x, in_axes=None, train=False, hyp_map=hyp_map))
  out = apply(variables, x)
  single = jax.jit(functools.partial(MODEL.apply, train=False))
  for i in range(NUM):
    np.testing.assert_allclose(out[i], single(_slice(variables, i), x),
                               rtol=1e-4, atol=1e-5)


class _Dropout(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    return nn.Dropout(0.5, deterministic=not train)(nn.Dense(4)(x))


@pytest.mark.parametrize('hyp_map', ['vmap', 'loop'])
def test_apply_stacked_gives_each_hypothesis_its_own_rng(hyp_map):
  model = _Dropout()
  x = jnp.ones((5, 3))
  variables = hypotheses.init_stacked(model, jax.random.key(0), NUM, x,
                                      train=False)
  key = jax.random.key(7)
  out = hypotheses.apply_stacked(model, variables, x, in_axes=None, train=True,
                                 rngs={'dropout': key}, hyp_map=hyp_map)
  for i, k in enumerate(jax.random.split(key, NUM)):
    expected = model.apply(_slice(variables, i), x, train=True,
                           rngs={'dropout': k})
    np.testing.assert_allclose(out[i], expected, rtol=1e-6)
  masks = np.asarray(out == 0)
  assert not (masks[0] == masks[1]).all()


def test_bad_arguments_raise():
  variables = {'params': {'w': jnp.zeros((NUM, 2))}}
  with pytest.raises(ValueError, match='hypothesis axis'):
    hypotheses.apply_stacked(MODEL, variables, jnp.zeros((NUM + 1, 2)))
  with pytest.raises(ValueError, match='in_axes'):
    hypotheses.apply_stacked(MODEL, variables, jnp.zeros((NUM, 2)),
                             in_axes=(0, None))
  with pytest.raises(ValueError, match='leading'):
    hypotheses.num_hypotheses({'a': jnp.zeros((2, 1)), 'b': jnp.zeros((3,))})
  with pytest.raises(ValueError, match='num'):
    hypotheses.init_stacked(MODEL, jax.random.key(0), 0, jnp.zeros((1, 64, 64, 6)))
