"""Tests for deepskeleton_jax.models.skeleton_net."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitting_util  # tests/fitting_util.py

from deepskeleton_jax.models import skeleton_net

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8, decoder_width=16)


@functools.lru_cache(maxsize=None)
def _tiny(dtype=jnp.float32):
  model = skeleton_net.SkeletonMapNet(**TINY, dtype=dtype)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((2, 64, 64, 3)))
  return model, variables


def _batch(seed=0, batch=2, size=64):
  k1, k2 = jax.random.split(jax.random.key(seed))
  images = jax.random.normal(k1, (batch, size, size, 3))
  targets = (jax.random.uniform(k2, (batch, size // 4, size // 4, 6)) > 0.8)
  return images, targets.astype(jnp.float32)


def _np_bce(logits, targets):
  logits = np.asarray(logits, np.float64)
  p = 1.0 / (1.0 + np.exp(-logits))
  return -(targets * np.log(p) + (1 - targets) * np.log(1 - p))


@pytest.mark.parametrize('size', [224, 192])
def test_full_size_shapes(size):
  model = skeleton_net.SkeletonMapNet()
  logits, variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0),
                                     jnp.zeros((2, size, size, 3)),
                                     train=False))
  s = size // 4
  assert [l.shape for l in logits] == [(2, s // 4, s // 4, 6),
                                       (2, s // 2, s // 2, 6),
                                       (2, s, s, 6), (2, s, s, 6)]
  assert all(l.dtype == jnp.float32 for l in logits)
  assert 'backbone' in variables['params']
  backbone = sum(x.size for x in jax.tree.leaves(variables['params']['backbone']))
  assert backbone == 23_508_032


def test_bilinear_kernel_reproduces_ramp_and_bilinear_resize():
  up = skeleton_net.Upsample(features=2)
  h = w = 8
  # A ramp sampled at input pixel centres (continuous convention: (i+.5, j+.5)).
  ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  ramp = np.stack([2.0 * ii - 0.5 * jj + 1.0, 0.3 * ii + 1.5 * jj], -1)
  variables = jax.jit(up.init)(jax.random.key(0), jnp.zeros((1, h, w, 2)))
  out = np.asarray(up.apply(variables, jnp.asarray(ramp[None], jnp.float32)))[0]
  assert out.shape == (2 * h, 2 * w, 2)
  # Output pixel (p, q) has centre ((p+.5)/2, (q+.5)/2) in input pixels, i.e.
  # input "index" (p+.5)/2 - .5; a ramp is linear in the index.
  pp, qq = np.meshgrid(np.arange(2 * h), np.arange(2 * w), indexing='ij')
  u, v = (pp + 0.5) / 2 - 0.5, (qq + 0.5) / 2 - 0.5
  expected = np.stack([2.0 * u - 0.5 * v + 1.0, 0.3 * u + 1.5 * v], -1)
  np.testing.assert_allclose(out[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-5)
  # A smooth non-linear map matches half-pixel bilinear resizing inside too.
  smooth = np.sin(ii / 2.0)[..., None] * np.cos(jj / 3.0)[..., None] * [1, -2]
  out = up.apply(variables, jnp.asarray(smooth[None], jnp.float32))[0]
  ref = jax.image.resize(jnp.asarray(smooth, jnp.float32), (2 * h, 2 * w, 2),
                         'bilinear')
  np.testing.assert_allclose(out[1:-1, 1:-1], ref[1:-1, 1:-1], atol=1e-5)


def test_model_upsampling_layers_start_bilinear():
  _, variables = _tiny()
  kernel = np.asarray(variables['params']['up_res2c']['deconv']['kernel'])
  assert kernel.shape == (4, 4, 16, 16)
  taps = np.array([0.25, 0.75, 0.75, 0.25])
  np.testing.assert_allclose(kernel[:, :, 3, 3], np.outer(taps, taps))
  off_diagonal = kernel * (1 - np.eye(16))[None, None]
  assert not off_diagonal.any()


def test_tiny_forward_backward_shapes():
  model, variables = _tiny()
  images, targets = _batch()
  logits = jax.jit(functools.partial(model.apply, train=False))(variables,
                                                                 images)
  assert [l.shape for l in logits] == [(2, 4, 4, 6), (2, 8, 8, 6),
                                       (2, 16, 16, 6), (2, 16, 16, 6)]

  def loss_fn(params):
    out, _ = model.apply({'params': params,
                          'batch_stats': variables['batch_stats']}, images,
                         train=True, mutable=['batch_stats'])
    return skeleton_net.skeleton_map_loss(out, targets)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Gradients reach the encoder through the decoder.
  assert np.abs(grads['backbone']['stem']['conv1']['kernel']).sum() > 0


def test_loss_matches_numpy_reference():
  rng = np.random.default_rng(0)
  targets = rng.uniform(size=(2, 8, 8, 6)).astype(np.float32)
  logits = [rng.normal(size=(2, 2, 2, 6)) * 3, rng.normal(size=(2, 8, 8, 6))]
  got = skeleton_net.skeleton_map_loss(
      [jnp.asarray(l, jnp.float32) for l in logits], jnp.asarray(targets))
  coarse = np.zeros((2, 2, 2, 6))
  for i in range(2):
    for j in range(2):
      coarse[:, i, j] = targets[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((1, 2))
  expected = 0.5 * (_np_bce(logits[0], coarse).mean() +
                    _np_bce(logits[1], targets).mean())
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_loss_rejects_mismatched_heads():
  targets = jnp.zeros((2, 8, 8, 6))
  with pytest.raises(ValueError, match='logits'):
    skeleton_net.skeleton_map_loss([jnp.zeros((2, 8, 8, 3))], targets)
  with pytest.raises(ValueError, match='integer multiple'):
    skeleton_net.skeleton_map_loss([jnp.zeros((2, 3, 3, 6))], targets)
  with pytest.raises(ValueError, match='non-empty'):
    skeleton_net.skeleton_map_loss([], targets)


def test_loss_decreases_on_fixed_batch():
  model, variables = _tiny()
  images, targets = _batch(seed=3)
  losses = fitting_util.adam_losses(
      model, variables, images,
      lambda out: skeleton_net.skeleton_map_loss(out, targets), 6)
  assert losses[-1] < 0.8 * losses[0], losses


def test_bfloat16_path():
  model, variables = _tiny(jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  images, targets = _batch()
  logits, upd = jax.jit(functools.partial(
      model.apply, train=True, mutable=['batch_stats']))(variables, images)
  assert all(l.dtype == jnp.float32 for l in logits)
  assert {x.dtype for x in jax.tree.leaves(upd)} == {jnp.dtype(jnp.float32)}
  assert np.isfinite(skeleton_net.skeleton_map_loss(logits, targets))


@pytest.mark.parametrize('shape, match', [
    ((1, 64, 64, 6), 'in_channels=3'),
    ((1, 80, 80, 3), 'multiples of 32'),
])
def test_bad_input_raises(shape, match):
  model = skeleton_net.SkeletonMapNet(**TINY)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                      train=False))
