"""Stage inputs and outputs: the regressor's mix of rendered and predicted maps, the
hourglass' integral targets and decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages
from deepskeleton_jax.training import train_step


def _config(**regressor):
  config = tiny.get_config()
  config.regressor.update(regressor)
  return config_lib.finalize(config)


def _batch(config, b=4, seed=0):
  rng = np.random.default_rng(seed)
  c, s = len(config.data.crop_scales), config.data.input_size
  return {
      'image': jnp.asarray(rng.integers(0, 256, (b, c, s, s, 3), dtype=np.uint8)),
      'joints_2d': jnp.asarray(rng.uniform(2, s - 2, (b, c, 16, 2)), jnp.float32),
      'joints_3d': jnp.asarray(rng.normal(0, 300, (b, 16, 3)) + [0, 0, 4000], jnp.float32),
      'visible': jnp.ones((b, 16), bool),
      'has_3d': jnp.ones((b,), bool),
  }


def test_predicted_input_mixes_rendered_and_predicted_maps_by_step():
  config = _config(input='predicted', gt_fraction=0.5, gt_steps=10)
  reg = stages.build(config, 'regressor')
  skel = stages.build(config, 'skeleton_net')
  lay = stages.layout(config)
  aux = train_step.init_variables(skel, jax.random.PRNGKey(1))
  batch = _batch(config)
  norm = {'mean': jnp.zeros((16, 3)), 'std': jnp.ones(())}
  hyps = np.arange(lay.num_hyps)
  rendered = reg.prepare(stages.render_maps(batch, lay))
  predicted = reg.prepare(stages.predicted_maps(skel, aux, batch, lay, hyps))
  assert not np.allclose(rendered, predicted, atol=1e-2)  # the two sources differ

  early, _ = jax.jit(reg.make_inputs)(batch, aux, norm, jnp.int32(3))
  np.testing.assert_allclose(early, rendered, atol=1e-5)
  late, _ = jax.jit(reg.make_inputs)(batch, aux, norm, jnp.int32(10))
  np.testing.assert_allclose(late[:, :2], rendered[:, :2], atol=1e-5)
  np.testing.assert_allclose(late[:, 2:], predicted[:, 2:], atol=1e-4)
  # Outside training (no step) the mix is the late one.
  evaluated, _ = reg.make_inputs(batch, aux, norm)
  np.testing.assert_allclose(evaluated, late, atol=1e-4)


def test_gt_input_ignores_step():
  config = _config(input='gt')
  reg = stages.build(config, 'regressor')
  lay = stages.layout(config)
  batch = _batch(config, seed=1)
  norm = {'mean': jnp.zeros((16, 3)), 'std': jnp.ones(())}
  x, _ = reg.make_inputs(batch, None, norm, jnp.int32(100))
  np.testing.assert_allclose(x, reg.prepare(stages.render_maps(batch, lay)), atol=1e-6)


def test_rendered_map_steps_read_gt_split(monkeypatch):
  from deepskeleton_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.training import train_loop  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(input_pipeline, 'make_iterator',
                      lambda data, split, *a, **k: split)
  monkeypatch.setattr(input_pipeline, 'ChainedIterator', lambda *parts: parts)
  predicted = _config(input='predicted', gt_steps=7, gt_split='poses')
  assert train_loop.train_iterator(predicted, 'regressor', (0, 1)) == ('poses', 7, 'train')
  assert train_loop.train_iterator(predicted, 'skeleton_net', (0, 1)) == 'train'
  assert train_loop.train_iterator(_config(input='gt', gt_split='poses'), 'regressor', (0, 1)) == 'poses'
  assert train_loop.train_iterator(_config(input='predicted', gt_steps=0, gt_split='poses'),
                                   'regressor', (0, 1)) == 'train'
  assert train_loop.train_iterator(_config(input='gt'), 'regressor', (0, 1)) == 'train'


def test_integral_hourglass_targets_and_decoding_round_trip():
  """Integral targets are the joints in heatmap pixels; logits peaked there decode back."""
  config = tiny.get_config()
  config.hourglass.update(loss='integral', input_size=64)
  config = config_lib.finalize(config)
  hg = stages.build(config, 'hourglass')
  lay = stages.layout(config)
  batch = _batch(config, seed=2)
  s = config.data.input_size
  c = len(config.data.crop_scales)
  batch['joints_2d'] = jnp.asarray(
      np.random.default_rng(3).uniform(0.25 * s, 0.75 * s, (4, c, 16, 2)), jnp.float32)
  joints_2d = batch['joints_2d'][:, lay.unit]  # the c = 1 crop's joints
  images, targets = hg.make_inputs(batch, None, None)
  assert images.shape == (1, 4, 64, 64, 3) and targets.shape == (1, 4, 16, 2)
  np.testing.assert_allclose(targets[0], joints_2d * (16 / s), rtol=1e-6)
  # Log of a Gaussian (sigma 0.7 heatmap px) around each target: its softmax mean is the target.
  centres = np.arange(16) + 0.5
  d2 = ((centres[None, None, :, None] - targets[0][:, None, None, :, 0])**2
        + (centres[None, :, None, None] - targets[0][:, None, None, :, 1])**2)
  logits = jnp.asarray(-d2 / (2 * 0.7**2))[None]          # [H=1, b, 16, 16, K]
  assert float(hg.loss([logits[0]], targets[0], batch)[0]) < 1e-3
  joints, conf = hg.predict([logits], None)
  assert joints.shape == (1, 4, 16, 2) and conf.shape == (1, 4, 16)
  np.testing.assert_allclose(joints[0], joints_2d, atol=0.05)
  assert np.all(np.asarray(conf) > 0.8)


def test_unknown_hourglass_loss_is_refused():
  from deepskeleton_jax import errors  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.hourglass.loss = 'l2'
  with pytest.raises(errors.ConfigError, match=r"hourglass\.loss.*'mse' or 'integral'"):
    config_lib.finalize(config)
