"""Loss scales: every stage of every paper config against the paper's Caffe losses and rates.

The paper (Section 5.1) trained with Caffe: the SkeletonMapNet at base rate
1e-5, the regressors at 1e-2, SGD with momentum 0.9 and weight decay 2e-4. The
Caffe losses are written here from Caffe's layer source, independently of the
project's losses:

  SigmoidCrossEntropyLoss, Forward_cpu: over all C x H x W elements of a blob,
    loss -= x (t - (x >= 0)) - log(1 + exp(x - 2 x (x >= 0))), then / num
    (the batch size: `loss / num` before 2017; after, `normalization`, whose
    default for this layer is BATCH_SIZE). One such layer per supervision head
    (loss_weight 1), so the net's loss is their sum.
  EuclideanLoss, Forward_cpu: dot(diff, diff) / num / 2.

For each config the test takes one hypothesis of each SGD stage at the
config's input size (narrow layers: the scale does not depend on the width),
the same parameters and the same batch, and measures with `jax.grad` the ratio
r of the gradient of the config's loss to that of the Caffe loss. The ratio
must be one constant for every parameter, and the config's rate x r must be
the paper's rate (and rate x weight decay the paper's decay per step), i.e.
the update is the paper's whatever the loss's normalisation. Stages that are
not the paper's networks (hourglass, lifting) must use Adam, whose update does
not depend on a global loss scale.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.models import regressor
from deepskeleton_jax.models import skeleton_net

PAPER_RATE = {'skeleton_net': 1e-5, 'regressor': 1e-2, 'direct_rgb': 1e-2, 'ensemble': 1e-2}
PAPER_WEIGHT_DECAY = 2e-4
PAPER_CONFIGS = (
    ('h36m_skeleton_net', None), ('h36m_regressor', 'gt'), ('h36m_regressor', 'predicted'),
    ('h36m_direct_rgb', None), ('h36m_ensemble', None), ('h36m_lifting', None),
    ('h36m_deepskeleton', None),
    ('mpii_skeleton_net', None), ('mpii_regressor', 'gt'), ('mpii_regressor', 'predicted'),
    ('mpii_ensemble', None), ('mpii_hourglass', None), ('mpii_deepskeleton', None),
)
BATCH = 3


def caffe_sigmoid_cross_entropy(x, t):
  """Caffe's SigmoidCrossEntropyLoss of one blob [N, ...], normalised by N."""
  pos = (x >= 0).astype(x.dtype)
  return -jnp.sum(x * (t - pos) - jnp.log(1 + jnp.exp(x - 2 * x * pos))) / x.shape[0]


def caffe_euclidean(pred, target):
  """Caffe's EuclideanLoss: dot(diff, diff) / num / 2."""
  diff = (pred - target).reshape(pred.shape[0], -1)
  return jnp.sum(diff * diff) / pred.shape[0] / 2


def block_mean(maps, side):
  """[N, S, S, C] averaged over (S / side)^2 blocks: a coarse head's target."""
  n, s, _, c = maps.shape
  return maps.reshape(n, side, s // side, side, s // side, c).mean(axis=(2, 4))


def caffe_loss(stage_name, outputs, targets):
  if stage_name == 'skeleton_net':  # one loss layer per head, summed
    return sum(caffe_sigmoid_cross_entropy(head, block_mean(targets, head.shape[1]))
               for head in outputs)
  return caffe_euclidean(outputs, targets['pose'])


def _config(name, arg):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  for stage in ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble'):
    config[stage].model.update(stage_sizes=(1, 1, 1, 1), width=4)
  config.skeleton_net.model.decoder_width = 8
  config.parallel.hyp_map = 'vmap'
  return config_lib.finalize(config)


_RATIOS = {}


def measured_ratio(config, stage_name):
  """r = grad(config's loss) / grad(Caffe's loss), checked to be one constant."""
  stage = stages_lib.build(config, stage_name)
  loss_kind = config[stage_name].loss
  key = (stage_name, loss_kind, stage.dummy_input.shape)
  if key in _RATIOS:
    return _RATIOS[key]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(BATCH,) + stage.dummy_input.shape[1:]), jnp.float32)
  variables = stage.model.init(jax.random.PRNGKey(0), x, train=False)
  if stage_name == 'skeleton_net':
    side = stage.dummy_input.shape[1] // 4
    targets = jnp.asarray(rng.uniform(size=(BATCH, side, side, 6)), jnp.float32)
  else:
    targets = {'pose': jnp.asarray(rng.normal(size=(BATCH, 16, 3)), jnp.float32),
               'weight': jnp.ones((BATCH,), jnp.float32)}

  def outputs(params):
    return stage.model.apply({**variables, 'params': params}, x, train=False)

  ours = jax.jit(jax.grad(lambda p: stage.loss(outputs(p), targets, None)[0]))(
      variables['params'])
  caffe = jax.jit(jax.grad(lambda p: caffe_loss(stage_name, outputs(p), targets)))(
      variables['params'])
  a = np.concatenate([np.ravel(g) for g in jax.tree.leaves(ours)]).astype(np.float64)
  b = np.concatenate([np.ravel(g) for g in jax.tree.leaves(caffe)]).astype(np.float64)
  ratio = float(a @ b / (b @ b))
  # One constant for every parameter: the losses differ by a scale only.
  np.testing.assert_allclose(a, ratio * b, rtol=0, atol=1e-4 * np.abs(a).max(),
                             err_msg=f'{key}: not a constant multiple of the Caffe gradient')
  _RATIOS[key] = ratio
  return ratio


@pytest.mark.parametrize('name,arg', PAPER_CONFIGS,
                         ids=[f'{n}:{a}' if a else n for n, a in PAPER_CONFIGS])
def test_every_paper_stage_updates_like_the_papers_caffe_run(name, arg):
  config = _config(name, arg)
  for stage_name in config_lib.stage_list(config):
    tcfg = config[stage_name].train
    if stage_name not in PAPER_RATE:  # not the paper's networks
      assert tcfg.optimizer == 'adam', (name, stage_name)
      continue
    assert tcfg.optimizer == 'sgd' and tcfg.momentum == 0.9, (name, stage_name)
    ratio = measured_ratio(config, stage_name)
    paper = PAPER_RATE[stage_name]
    np.testing.assert_allclose(tcfg.learning_rate * ratio, paper, rtol=1e-4,
                               err_msg=f'{name}: {stage_name} rate x gradient ratio')
    np.testing.assert_allclose(tcfg.learning_rate * tcfg.weight_decay,
                               paper * PAPER_WEIGHT_DECAY, rtol=1e-9,
                               err_msg=f'{name}: {stage_name} decay per step')


def test_mean_loss_weighs_each_head_by_one_over_its_pixels():
  """The project's 'mean' loss: a logit of a head with P pixels gets 1 / (4 P 6) of Caffe's gradient.

  At 224 px: 1/4,704 (14x14), 1/18,816 (28x28), 1/75,264 (56x56, twice): no
  single rate can make the 'mean' loss the paper's.
  """
  rng = np.random.default_rng(1)
  logits = [jnp.asarray(rng.normal(size=(BATCH, s, s, 6)), jnp.float32) for s in (14, 28, 56, 56)]
  targets = jnp.asarray(rng.uniform(size=(BATCH, 56, 56, 6)), jnp.float32)
  ours = jax.grad(lambda l: skeleton_net.skeleton_map_loss(l, targets, 'mean'))(logits)
  caffe = jax.grad(lambda l: caffe_loss('skeleton_net', l, targets))(logits)
  for o, c, want in zip(ours, caffe, (4_704, 18_816, 75_264, 75_264)):
    o, c = np.asarray(o, np.float64), np.asarray(c, np.float64)
    np.testing.assert_allclose(np.sum(c * o) / np.sum(o * o), want, rtol=1e-5)
    np.testing.assert_allclose(c, want * o, rtol=0, atol=1e-5 * np.abs(c).max())
  # The 'caffe' loss is Caffe's.
  same = jax.grad(lambda l: skeleton_net.skeleton_map_loss(l, targets, 'caffe'))(logits)
  for o, c in zip(same, caffe):
    np.testing.assert_allclose(o, c, rtol=0, atol=1e-5 * np.abs(c).max())


def test_distance_loss_has_no_constant_rate():
  """The mean distance's gradient is 1 / (16 ||p - t||) of EuclideanLoss's, joint by joint."""
  rng = np.random.default_rng(2)
  pred = jnp.asarray(rng.normal(size=(BATCH, 16, 3)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(BATCH, 16, 3)), jnp.float32)
  ours = jax.grad(lambda p: regressor.pose_loss(p, target))(pred)
  caffe = jax.grad(lambda p: caffe_euclidean(p, target))(pred)
  dist = np.linalg.norm(np.asarray(pred - target), axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(ours) / np.asarray(caffe),
                             np.broadcast_to(1 / (16 * dist), pred.shape), rtol=1e-4)
  assert np.ptp(dist) > 0.5  # the ratio changes with the error
  # The 'euclidean' loss is Caffe's, with example weights counting examples.
  weights = jnp.asarray([1.0, 1.0, 0.0])
  np.testing.assert_allclose(regressor.euclidean_loss(pred, target, weights),
                             caffe_euclidean(pred[:2], target[:2]), rtol=1e-6)


@pytest.mark.parametrize('name', ['demo', 'tiny'])
def test_demo_and_tiny_keep_their_losses_and_adam(name):
  """Their training is unchanged: the project's averaged losses, Adam (scale-invariant)."""
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.skeleton_net.loss == 'mean'
  for stage in ('skeleton_net', 'regressor', 'direct_rgb', 'ensemble', 'hourglass', 'lifting'):
    assert config[stage].train.optimizer == 'adam', (name, stage)
  for stage in ('regressor', 'direct_rgb', 'ensemble', 'lifting'):
    assert config[stage].loss == 'distance', (name, stage)
