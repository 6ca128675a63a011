"""Every experiment config at full size: its stages' train and eval steps trace.

For each file under configs/ (with each argument it documents), `finalize` and
`jax.eval_shape` of every stage's full train step (all stacked hypotheses,
the config's real batch size and input size) and of the evaluation's
inference function: no compute, so a shape or config error in a paper
experiment fails CI in seconds. Hypotheses are traced with `vmap` (one trace;
`loop` gives the same shapes).
"""

import importlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.training import benchmark as train_benchmark
from deepskeleton_jax.inference import pipeline
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.training import train_step

CONFIGS = (
    ('bvh_regressor', None), ('demo', None), ('tiny', None),
    ('h36m_skeleton_net', None), ('h36m_regressor', 'gt'), ('h36m_regressor', 'predicted'),
    ('h36m_direct_rgb', None), ('h36m_ensemble', None), ('h36m_lifting', None),
    ('h36m_deepskeleton', None),
    ('mpii_skeleton_net', None), ('mpii_regressor', 'gt'), ('mpii_regressor', 'predicted'),
    ('mpii_ensemble', None), ('mpii_hourglass', None), ('mpii_deepskeleton', None),
)
_NORM = {'mean': np.zeros((16, 3), np.float32), 'std': np.ones((), np.float32)}
_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def test_every_config_file_is_covered():
  names = {p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
           if not p.stem.endswith('_common')}
  assert names == {name for name, _ in CONFIGS}


def _config(name, arg):
  config = config_lib.finalize(importlib.import_module(f'configs.{name}').get_config(arg))
  config.parallel.hyp_map = 'vmap'
  return config


def _abstract_batch(config, batch_size, streams=0):
  one = stages_lib.tile_streams(train_benchmark.synthetic_batch(config, 1), streams)
  return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in one.items()}


def _variables(stage):
  return jax.eval_shape(lambda r: train_step.init_variables(stage, r), _KEY)


def _signature(config) -> str:
  """What the traced shapes depend on: every group but the mode groups and `stages`."""
  groups = {k: v for k, v in config.to_dict().items()
            if k not in ('stages', 'eval', 'predict', 'benchmark', 'export', 'parallel')}
  return json.dumps(groups, sort_keys=True, default=str)


_TRACED: dict[tuple[str, str], Any] = {}  # configs sharing a signature trace once


def _trace_train_step(config, stage_name):
  stage = stages_lib.build(config, stage_name)
  tcfg = config[stage_name].train
  tx = train_step.make_optimizer(tcfg)
  state = jax.eval_shape(
      lambda v: train_step.create_state(v, tx, _NORM, jax.random.PRNGKey(0)),
      _variables(stage))
  aux = _variables(stages_lib.build(config, stage.needs)) if stage.needs else None
  new_state, metrics = jax.eval_shape(
      train_step.make_train_step(stage, tcfg), state,
      _abstract_batch(config, tcfg.batch_size, stage.data_streams), aux)
  assert jax.tree.structure(new_state) == jax.tree.structure(state), stage_name
  assert metrics['loss'].shape == (), stage_name
  assert jax.tree.leaves(state.params)[0].shape[0] == stage.num_hyps, stage_name


def _trace_inference(config):
  """The evaluation's (and prediction's) inference function over every pipeline stage."""
  loaded = {s: {'stage': stages_lib.build(config, s)} for s in pipeline.PIPELINE_STAGES}
  variables = {s: _variables(v['stage']) for s, v in loaded.items()}
  norms = {s: _NORM for s in loaded}
  return jax.eval_shape(pipeline.make_predict_fn(config, loaded), variables, norms,
                        _abstract_batch(config, config.eval.batch_size))


@pytest.mark.parametrize('name,arg', CONFIGS, ids=[f'{n}:{a}' if a else n for n, a in CONFIGS])
def test_train_and_eval_steps_trace_at_full_size(name, arg):
  config = _config(name, arg)
  lay = stages_lib.layout(config)
  sig = _signature(config)
  for stage_name in config_lib.stage_list(config):
    if (sig, stage_name) not in _TRACED:
      _trace_train_step(config, stage_name)
      _TRACED[sig, stage_name] = True
  key = (sig, f'inference {config.eval.batch_size}')
  if key not in _TRACED:
    _TRACED[key] = _trace_inference(config)
  out, b, h = _TRACED[key], config.eval.batch_size, lay.num_hyps
  assert out['maps'].shape == (h, b, lay.map_size, lay.map_size, 6)
  assert out['hyps'].shape == out['gt_hyps'].shape == (b, h, 16, 3)
  assert out['ensemble'].shape == (b, config.ensemble.num_runs, 16, 3)
  assert out['direct'].shape == (b, 16, 3)
  assert out['detections'].shape == (b, 16, 2) and out['detection_conf'].shape == (b, 16)
  if name.startswith('h36m'):
    assert (h, lay.map_size) == (11, 56) and np.all(lay.widths == np.arange(5, 16))
  if name.startswith('mpii') and name != 'mpii_hourglass':
    assert h == 18 and sorted(set(config.data.crop_scales)) == [1.0, 1.25, 1.5]
    assert config.ensemble.num_runs == 18  # Table 9
  if name.startswith('h36m'):
    assert config.ensemble.num_runs == 11  # Table 6


PAPER_DECONV_DECAY = 1e-5 * 2e-4     # the paper's rate x weight decay per step
PAPER_REGRESSOR_DECAY = 1e-2 * 2e-4


@pytest.mark.parametrize('name,arg', [c for c in CONFIGS if c[0].startswith(('h36m', 'mpii'))])
def test_per_step_weight_decay_is_the_papers(name, arg):
  """Coupled decay per step = rate x weight decay, as the paper's for every SGD stage."""
  config = _config(name, arg)
  for stage, paper in (('skeleton_net', PAPER_DECONV_DECAY), ('regressor', PAPER_REGRESSOR_DECAY),
                       ('direct_rgb', PAPER_REGRESSOR_DECAY), ('ensemble', PAPER_REGRESSOR_DECAY)):
    tcfg = config[stage].train
    assert tcfg.optimizer == 'sgd'
    np.testing.assert_allclose(tcfg.learning_rate * tcfg.weight_decay, paper, rtol=1e-9,
                               err_msg=f'{name}: {stage}')
