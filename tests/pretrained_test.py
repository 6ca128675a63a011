"""Tests for deepskeleton_jax.models.pretrained (torchvision -> Flax ResNet).

The reference forward pass below is an independent NumPy implementation of
torchvision's ResNet (NCHW, OIHW kernels, conv padding k // 2, max pool 3x3/2
pad 1 with -inf, v1.5 stride on the 3x3 conv, eval-mode BatchNorm eps 1e-5).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from deepskeleton_jax.models import hypotheses
from deepskeleton_jax.models import pretrained
from deepskeleton_jax.models import regressor
from deepskeleton_jax.models import resnet

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


def torchvision_shapes(stage_sizes, width, in_channels=3):
  """State-dict key -> shape of torchvision's ResNet with Bottleneck blocks."""
  shapes = {'conv1.weight': (width, in_channels, 7, 7)}

  def bn(prefix, c):
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{prefix}.{name}'] = (c,)
    shapes[f'{prefix}.num_batches_tracked'] = ()

  bn('bn1', width)
  inplanes = width
  for layer, blocks in enumerate(stage_sizes, start=1):
    planes = width * 2**(layer - 1)
    for i in range(blocks):
      p = f'layer{layer}.{i}'
      shapes[f'{p}.conv1.weight'] = (planes, inplanes, 1, 1)
      bn(f'{p}.bn1', planes)
      shapes[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
      bn(f'{p}.bn2', planes)
      shapes[f'{p}.conv3.weight'] = (4 * planes, planes, 1, 1)
      bn(f'{p}.bn3', 4 * planes)
      if i == 0:
        shapes[f'{p}.downsample.0.weight'] = (4 * planes, inplanes, 1, 1)
        bn(f'{p}.downsample.1', 4 * planes)
      inplanes = 4 * planes
  shapes['fc.weight'] = (1000, inplanes)
  shapes['fc.bias'] = (1000,)
  return shapes


def random_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in shapes.items():
    if key.endswith('num_batches_tracked'):
      state[key] = np.array(100, np.int64)
    elif key.endswith('running_var'):
      state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif key.endswith('.weight') and len(shape) == 4:
      fan_in = np.prod(shape[1:])
      state[key] = (rng.normal(size=shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    else:
      state[key] = (rng.normal(size=shape) * 0.3 +
                    (1.0 if key.endswith('bn3.weight') else 0.0)).astype(np.float32)
  return state


# --- NumPy reference (torchvision semantics, NCHW) ---------------------------

def np_conv(x, w, stride=1):
  pad = w.shape[-1] // 2
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  kh, kw = w.shape[2:]
  ho = (x.shape[2] - kh) // stride + 1
  wo = (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for a in range(kh):
    for b in range(kw):
      patch = x[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride]
      out += np.einsum('nchw,oc->nohw', patch, w[:, :, a, b])
  return out


def np_bn(x, state, prefix):
  g = lambda n: state[f'{prefix}.{n}'][None, :, None, None]
  return (x - g('running_mean')) / np.sqrt(g('running_var') + 1e-5) * g(
      'weight') + g('bias')


def np_maxpool(x):
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho, wo = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  windows = [x[:, :, a:a + 2 * ho:2, b:b + 2 * wo:2] for a in range(3)
             for b in range(3)]
  return np.max(windows, axis=0)


def np_stem(x, state):
  relu = lambda v: np.maximum(v, 0)
  return np_maxpool(relu(np_bn(np_conv(x, state['conv1.weight'], 2), state,
                               'bn1')))


def np_resnet(x, state, stage_sizes):
  """Returns the stage outputs of torchvision's ResNet, NCHW."""
  relu = lambda v: np.maximum(v, 0)
  x = np_stem(x, state)
  outs = []
  for layer, blocks in enumerate(stage_sizes, start=1):
    for i in range(blocks):
      p = f'layer{layer}.{i}'
      stride = 2 if layer > 1 and i == 0 else 1
      y = relu(np_bn(np_conv(x, state[f'{p}.conv1.weight']), state, f'{p}.bn1'))
      y = relu(np_bn(np_conv(y, state[f'{p}.conv2.weight'], stride), state,
                     f'{p}.bn2'))
      y = np_bn(np_conv(y, state[f'{p}.conv3.weight']), state, f'{p}.bn3')
      if f'{p}.downsample.0.weight' in state:
        x = np_bn(np_conv(x, state[f'{p}.downsample.0.weight'], stride), state,
                  f'{p}.downsample.1')
      x = relu(x + y)
    outs.append(x)
  return outs


# --- Tests --------------------------------------------------------------------

def _stem_and_features(model, variables, x):
  out, state = jax.jit(functools.partial(
      model.apply, train=False, mutable=['intermediates'],
      capture_intermediates=lambda m, _: isinstance(m, resnet.Stem)))(
          variables, x)
  return state['intermediates']['stem']['__call__'][0], out


@functools.lru_cache(maxsize=None)
def _tiny_resnet_variables(in_channels):
  model = resnet.ResNet(**TINY, in_channels=in_channels)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((1, 64, 64, in_channels)))
  return model, variables


def test_safetensors_round_trip_matches_numpy_reference(tmp_path):
  state = random_state_dict(torchvision_shapes(**TINY))
  path = tmp_path / 'resnet.safetensors'
  save_file(state, str(path))
  loaded = pretrained.load_state_dict(path)
  assert set(loaded) == set(state)

  model, variables = _tiny_resnet_variables(3)
  converted, report = pretrained.convert_resnet50(loaded, variables, 3)
  assert report.complete, report
  assert set(report.ignored) == {'fc.weight', 'fc.bias'} | {
      k for k in state if k.endswith('num_batches_tracked')}
  p, s = converted['params'], converted['batch_stats']
  np.testing.assert_array_equal(p['stem']['conv1']['kernel'],
                                state['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p['layer3_0']['downsample_conv']['kernel'][0, 0],
                                state['layer3.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(s['layer2_0']['downsample_bn']['var'],
                                state['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(p['layer4_0']['bn3']['scale'],
                                state['layer4.0.bn3.weight'])

  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  stem, feats = _stem_and_features(model, converted, x)
  x_nchw = x.transpose(0, 3, 1, 2).astype(np.float64)
  ref_stem = np_stem(x_nchw, state).transpose(0, 2, 3, 1)
  assert stem.shape == ref_stem.shape == (2, 16, 16, 8)
  np.testing.assert_allclose(stem, ref_stem, rtol=1e-4, atol=1e-4)
  for name, ref in zip(resnet.STAGE_NAMES, np_resnet(x_nchw, state,
                                                    TINY['stage_sizes'])):
    ref = ref.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(feats[name], ref, rtol=1e-3,
                               atol=1e-3 * np.abs(ref).max())


def test_six_channel_first_conv_adaptation():
  state = random_state_dict(torchvision_shapes(**TINY))
  model3, v3 = _tiny_resnet_variables(3)
  model6, v6 = _tiny_resnet_variables(6)
  conv3, _ = pretrained.convert_resnet50(state, v3, 3)
  conv6, report = pretrained.convert_resnet50(state, v6, 6)
  assert report.complete
  kernel = np.asarray(conv6['params']['stem']['conv1']['kernel'])
  expected = state['conv1.weight'].mean(axis=1) * 0.5  # 3 / 6
  for c in range(6):
    np.testing.assert_allclose(kernel[:, :, c, :], expected.transpose(1, 2, 0),
                               rtol=1e-6)
  # A grey image over 6 channels gives the RGB network's features of that grey
  # image over 3 channels.
  grey = np.random.default_rng(2).uniform(size=(1, 64, 64, 1)).astype(np.float32)
  stem3, f3 = _stem_and_features(model3, conv3, np.repeat(grey, 3, -1))
  stem6, f6 = _stem_and_features(model6, conv6, np.repeat(grey, 6, -1))
  np.testing.assert_allclose(stem6, stem3, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(f6['pooled'], f3['pooled'], rtol=1e-4, atol=1e-5)


def test_full_size_resnet50_keys_fill_the_regressor_backbone():
  shapes = torchvision_shapes((3, 4, 6, 3), 64)
  # torchvision's resnet50 has 25,557,032 parameters.
  n = sum(int(np.prod(s)) for k, s in shapes.items()
          if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  assert n == 25_557_032
  state = {k: np.broadcast_to(np.float32(0.5), s) for k, s in shapes.items()}
  model = regressor.PoseRegressor(in_channels=6)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 6)), train=False))
  converted, report = pretrained.convert_resnet50(state, variables, 6)
  assert report.complete, report
  backbone = jax.tree.leaves(converted['params']['backbone'])
  assert all(isinstance(x, jax.Array) for x in backbone)
  assert sum(x.size for x in backbone) == 23_508_032 + 3 * 7 * 7 * 64
  # The regression head is not part of the backbone and stays untouched.
  assert not isinstance(converted['params']['fc']['kernel'], jax.Array)


def test_stacked_hypotheses_get_the_weights_in_every_hypothesis():
  model = regressor.PoseRegressor(**TINY)
  variables = jax.eval_shape(lambda: hypotheses.init_stacked(
      model, jax.random.key(0), 2, jnp.zeros((1, 64, 64, 6)), train=False))
  state = random_state_dict(torchvision_shapes(**TINY))
  converted, report = pretrained.convert_resnet50(state, variables, 6)
  assert report.complete
  kernel = converted['params']['backbone']['layer2_0']['conv2']['kernel']
  assert kernel.shape == (2, 3, 3, 16, 16)
  for h in range(2):
    np.testing.assert_array_equal(
        kernel[h], state['layer2.0.conv2.weight'].transpose(2, 3, 1, 0))


def test_missing_unexpected_and_mismatched_keys():
  _, variables = _tiny_resnet_variables(3)
  state = random_state_dict(torchvision_shapes(**TINY))
  del state['layer4.0.conv1.weight']
  state['extra.weight'] = np.zeros(3, np.float32)
  state['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  _, report = pretrained.convert_resnet50(state, variables, 3)
  assert report.missing == ('params/layer4_0/conv1/kernel',)
  assert report.unexpected == ('extra.weight', 'layer5.0.conv1.weight')
  assert not report.complete
  full = random_state_dict(torchvision_shapes(**TINY))
  full['layer1.0.conv2.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(ValueError, match='layer1.0.conv2.weight'):
    pretrained.convert_resnet50(full, variables, 3)


def test_load_state_dict_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    pretrained.load_state_dict(tmp_path / 'absent.safetensors')
  bad = tmp_path / 'weights.npz'
  bad.write_bytes(b'')
  with pytest.raises(ValueError, match='.safetensors'):
    pretrained.load_state_dict(bad)
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pth = tmp_path / 'weights.pth'
    pth.write_bytes(b'')
    with pytest.raises(ValueError, match='PyTorch'):
      pretrained.load_state_dict(pth)
