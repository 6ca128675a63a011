"""Tests for deepskeleton_jax.models.resnet."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.models import resnet

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def _tiny_variables(in_channels=3, dtype=jnp.float32, remat=False):
  model = resnet.ResNet(**TINY, in_channels=in_channels, dtype=dtype,
                        remat=remat)
  x = jnp.zeros((2, 64, 64, in_channels))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), x)
  return model, variables


def _images(in_channels=3, batch=2, size=64, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, in_channels))


def test_resnet50_parameter_count_matches_torchvision():
  model = resnet.ResNet50()
  out, variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0),
                                     jnp.zeros((2, 224, 224, 3)), train=False))
  # torchvision resnet50: 25,557,032 parameters, of which fc has 2048*1000+1000.
  assert _count(variables['params']) == 25_557_032 - (2048 * 1000 + 1000)
  assert _count(variables['params']) == 23_508_032
  # Running statistics: one mean and one var per BN channel (= scale count).
  bn_channels = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(
      variables['params']) if p[-1].key == 'scale')
  assert _count(variables['batch_stats']) == 2 * bn_channels
  shapes = {k: v.shape for k, v in out.items()}
  assert shapes == {'res2c': (2, 56, 56, 256), 'res3d': (2, 28, 28, 512),
                    'res4f': (2, 14, 14, 1024), 'res5c': (2, 7, 7, 2048),
                    'pooled': (2, 2048)}
  assert out['pooled'].dtype == jnp.float32


def test_resnet50_structure_and_six_channel_stem():
  model = resnet.ResNet50(in_channels=6)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 6)),
                         train=False))
  params = variables['params']
  assert params['stem']['conv1']['kernel'].shape == (7, 7, 6, 64)
  blocks = {k for k in params if k.startswith('layer')}
  expected = {f'layer{i + 1}_{j}' for i, n in enumerate((3, 4, 6, 3))
              for j in range(n)}
  assert blocks == expected
  # v1.5: the stride sits on the 3x3 conv; 1x1 convs are unstrided kernels.
  assert params['layer2_0']['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert params['layer2_0']['downsample_conv']['kernel'].shape == (1, 1, 256, 512)
  assert 'downsample_conv' not in params['layer2_1']
  # Parameter count is that of the RGB model plus 3 * 49 * 64 stem weights.
  assert _count(params) == 23_508_032 + 3 * 7 * 7 * 64


def test_tiny_forward_shapes_and_backward():
  model, variables = _tiny_variables()
  x = _images()
  out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert {k: v.shape for k, v in out.items()} == {
      'res2c': (2, 16, 16, 32), 'res3d': (2, 8, 8, 64),
      'res4f': (2, 4, 4, 128), 'res5c': (2, 2, 2, 256), 'pooled': (2, 256)}
  np.testing.assert_allclose(out['pooled'], out['res5c'].mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)

  def loss(params):
    feats, _ = model.apply({'params': params,
                            'batch_stats': variables['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
    return jnp.sum(feats['pooled'] ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert np.abs(grads['stem']['conv1']['kernel']).sum() > 0


def test_train_mode_updates_batch_stats_and_uses_batch_statistics():
  model, variables = _tiny_variables()
  x = _images() * 3.0 + 1.0
  out, updates = jax.jit(functools.partial(
      model.apply, train=True, mutable=['batch_stats']))(variables, x)
  stem_bn = updates['batch_stats']['stem']['bn1']
  assert np.abs(stem_bn['mean']).max() > 0
  out_eval = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert not np.allclose(out['pooled'], out_eval['pooled'])


def test_bfloat16_compute_keeps_float32_parameters_and_statistics():
  model16, v16 = _tiny_variables(dtype=jnp.bfloat16)
  _, v32 = _tiny_variables()
  assert {x.dtype for x in jax.tree.leaves(v16)} == {jnp.dtype(jnp.float32)}
  x = _images()
  out16, upd = jax.jit(functools.partial(
      model16.apply, train=True, mutable=['batch_stats']))(v16, x)
  assert out16['res5c'].dtype == jnp.bfloat16
  assert out16['pooled'].dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(upd)} == {jnp.dtype(jnp.float32)}
  # Same initialisation (dtype does not change parameters) -> close outputs.
  out32 = jax.jit(functools.partial(resnet.ResNet(**TINY).apply,
                                    train=False))(v32, x)
  out16e = jax.jit(functools.partial(model16.apply, train=False))(v16, x)
  np.testing.assert_allclose(out16e['pooled'], out32['pooled'], rtol=0.1,
                             atol=0.05 * np.abs(out32['pooled']).max())


def test_remat_matches_plain_model():
  model, variables = _tiny_variables()
  model_r, variables_r = _tiny_variables(remat=True)
  assert jax.tree.structure(variables) == jax.tree.structure(variables_r)
  x = _images()

  def loss(m, params):
    feats, _ = m.apply({'params': params,
                        'batch_stats': variables['batch_stats']}, x,
                       train=True, mutable=['batch_stats'])
    return jnp.sum(feats['pooled'] ** 2)

  g = jax.jit(jax.grad(functools.partial(loss, model)))(variables['params'])
  g_r = jax.jit(jax.grad(functools.partial(loss, model_r)))(variables['params'])
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_keeps_fewer_activations_for_the_backward_pass():
  """What the VJP saves (backend independent): block inputs only, with remat.

  XLA:CPU's buffer assignment does not show the saving (its scheduler is not
  memory-aware), so the residuals JAX keeps for the backward pass are counted.
  """
  from jax._src import ad_checkpoint  # pylint: disable=g-import-not-at-top

  def residual_bytes(remat):
    model, variables = _tiny_variables(remat=remat)

    def loss(params):
      feats, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                             _images(batch=4), train=True, mutable=['batch_stats'])
      return jnp.sum(feats['pooled'] ** 2)
    saved = ad_checkpoint.saved_residuals(loss, variables['params'])
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, _ in saved)

  assert residual_bytes(True) < 0.5 * residual_bytes(False)


@pytest.mark.parametrize('shape, match', [
    ((1, 64, 64, 6), 'in_channels=3'),
    ((1, 48, 64, 3), 'multiples of 32'),
    ((1, 64, 70, 3), 'multiples of 32'),
    ((64, 64, 3), r'\[B, H, W, 3\]'),
])
def test_bad_input_raises(shape, match):
  model = resnet.ResNet(**TINY)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                      train=False))


def test_bad_stage_sizes_raise():
  model = resnet.ResNet(stage_sizes=(1, 1, 1), width=8)
  with pytest.raises(ValueError, match='stage_sizes'):
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((1, 64, 64, 3)), train=False))
