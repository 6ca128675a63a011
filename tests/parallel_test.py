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


def test_hyp_axis_not_dividing_hypotheses_is_a_config_error():
  """Not silently replicated: 3 hypotheses cannot be split over 2 devices."""
  mesh = parallel.make_mesh(hyp_axis=2)
  with pytest.raises(errors.ConfigError, match='hyp_axis=2 must divide the 3'):
    parallel.state_sharding(mesh, _state(3, 'sgd'))
  with pytest.raises(errors.ConfigError, match='hyp_axis=2 must divide the 3 hypotheses of '
                     'stage regressor'):
    parallel.stage_mesh(2, 3, 'regressor')
  # One hypothesis has nothing to split: every device goes to the data axis.
  assert dict(parallel.stage_mesh(2, 1, 'direct_rgb').shape) == {'data': 8, 'hyp': 1}
  assert dict(parallel.stage_mesh(2, 4, 'regressor').shape) == {'data': 4, 'hyp': 2}


def _brute_force_shards(grid):
  """Per process, the data-axis rows it touches; processes touching a row must touch the same rows."""
  rows = {p: tuple(sorted({i for i in range(grid.shape[0]) if p in grid[i]}))
          for p in np.unique(grid)}
  groups = sorted(set(rows.values()))
  for r in groups:
    owners = {p for p, q in rows.items() if q == r}
    if any(set(grid[i]) - owners for i in r):
      return None
  flat = [i for r in groups for i in r]
  if sorted(flat) != list(range(grid.shape[0])) or len({len(r) for r in groups}) != 1:
    return None
  return {p: (groups.index(r), len(groups)) for p, r in rows.items()}


@pytest.mark.parametrize('processes,local,hyp_axis', [
    (2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 1, 2), (4, 2, 4), (4, 2, 8), (3, 2, 6),
    (2, 3, 2), (3, 4, 6), (2, 4, 8), (4, 1, 2)])
def test_shards_follow_host_boundaries(processes, local, hyp_axis):
  """Processes sharing data-axis rows share an input shard; a row split unevenly is refused."""
  grid = np.repeat(np.arange(processes), local).reshape(-1, hyp_axis)
  want = _brute_force_shards(grid)
  if want is None:
    with pytest.raises(errors.ConfigError, match='does not follow host boundaries'):
      parallel.shard_of_processes(grid, hyp_axis)
    return
  got = parallel.shard_of_processes(grid, hyp_axis)
  assert {p: tuple(int(v) for v in got[p]) for p in range(processes)} == want
  # Every shard feeds distinct rows: shards x rows per shard = the data axis.
  assert got[0, 1] * (grid.shape[0] // got[0, 1]) == grid.shape[0]


def test_hypothesis_axis_spanning_processes_shares_the_shard():
  # 2 processes x 1 device, hyp_axis 2: both hold the only data row, both feed the whole batch.
  assert parallel.shard_of_processes(np.array([[0, 1]]), 2).tolist() == [[0, 1], [0, 1]]
  # 2 processes x 3 devices, hyp_axis 2: row 1 holds devices of both processes.
  with pytest.raises(errors.ConfigError, match='hyp_axis=2 does not follow host boundaries'):
    parallel.shard_of_processes(np.array([[0, 0], [0, 1], [1, 1]]), 2)


def test_bad_mesh_is_a_config_error():
  with pytest.raises(errors.ConfigError, match='hyp_axis=3'):
    parallel.make_mesh(hyp_axis=3)
