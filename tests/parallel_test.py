"""Tests of experiment.parallel: state shardings chosen by tree path, meshes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from deepskeleton_jax import errors
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.training import train_step


def _state(num_hyps, optimizer):
  tcfg = ml_collections.ConfigDict({'weight_decay': 1e-4, 'optimizer': optimizer,
                                    'momentum': 0.9})
  tx = train_step.make_optimizer(tcfg)
  variables = {'params': {'conv': {'kernel': jnp.zeros((num_hyps, 3, 3, 4, 4))},
                          'bias': jnp.zeros((num_hyps, 4))},
               'batch_stats': {'mean': jnp.zeros((num_hyps, 4))}}
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.ones((), np.float32)}
  return train_step.create_state(variables, tx, norm, jax.random.PRNGKey(0))


def _specs(shardings):
  return jax.tree.map(lambda s: s.spec, shardings)


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_only_stacked_variables_shard_whatever_the_shapes(optimizer):
  mesh = parallel.make_mesh(hyp_axis=2)            # 8 fake devices: data 4 x hyp 2
  # H = 2 equals the rng key's length: the key must still be replicated.
  state = _state(2, optimizer)
  specs = _specs(parallel.state_sharding(mesh, state))
  assert specs.params['conv']['kernel'] == P('hyp')
  assert specs.params['bias'] == specs.batch_stats['mean'] == P('hyp')
  assert specs.rng == P() and specs.step == P() and specs.norm['std'] == P()
  opt = jax.tree_util.tree_flatten_with_path(specs.opt_state)[0]
  mirrored = [s for path, s in opt if 'kernel' in str(path) or 'bias' in str(path)]
  others = [s for path, s in opt if not ('kernel' in str(path) or 'bias' in str(path))]
  assert mirrored and all(s == P('hyp') for s in mirrored)
  assert all(s == P() for s in others)            # e.g. Adam's step count
  # H = 16 equals the pose mean's leading dimension: it stays replicated.
  specs = _specs(parallel.state_sharding(mesh, _state(16, optimizer)))
  assert specs.norm['mean'] == P() and specs.params['bias'] == P('hyp')


def test_hyp_axis_not_dividing_hypotheses_replicates():
  mesh = parallel.make_mesh(hyp_axis=2)
  specs = _specs(parallel.state_sharding(mesh, _state(3, 'sgd')))
  assert specs.params['bias'] == P()


def test_bad_mesh_is_a_config_error():
  with pytest.raises(errors.ConfigError, match='hyp_axis=3'):
    parallel.make_mesh(hyp_axis=3)
