"""Stacked networks that train as the paper's independent runs.

Ensemble members: each has its own initialisation of every layer a pretrained
file does not hold (and not regressor hypothesis b's), its own data order, and
the pretrained file's layers in every member; trained a few steps, their
predictions differ. Plateau: each stacked hypothesis decays its own rate on its
own validation loss, and the train step applies each hypothesis' own rate.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from configs import tiny
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import metric_writer
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.training import benchmark
from deepskeleton_jax.training import train_loop
from deepskeleton_jax.training import train_step
from pipeline_test import _replay_plateau
from pretrained_test import random_state_dict, torchvision_shapes

MEMBERS = 3


def _config(data_dir, pretrained=''):
  config = tiny.get_config()
  config.data.data_dir = str(data_dir)
  # As many hypotheses as members (as on Human3.6M: 11 and 11), so that
  # regressor hypothesis b and member b would share a key if keys were shared.
  config.hypotheses.crop_scales = (1.0, 1.0, 1.25)
  config.hypotheses.stick_widths = (40.0, 60.0, 50.0)
  config.ensemble.num_runs = MEMBERS
  config.ensemble.model.pretrained = pretrained
  config.ensemble.train.update(num_steps=3, checkpoint_every=3, learning_rate=1e-2)
  config.stages = 'ensemble'
  return config_lib.finalize(config)


def _train_recording_initial_variables(config, workdir, monkeypatch):
  """Trains the ensemble; returns (the variables it was initialised with, after the pretrained file)."""
  seen = {}
  init, load = train_step.init_variables, train_loop.load_pretrained

  def recording_init(stage, rng):
    out = init(stage, rng)
    if not isinstance(jax.tree.leaves(out)[0], jax.core.Tracer):
      seen['init'] = jax.tree.map(np.asarray, out)
    return out

  def recording_load(*args):
    seen['loaded'] = jax.tree.map(np.asarray, load(*args))
    return seen['loaded']

  monkeypatch.setattr(train_step, 'init_variables', recording_init)
  monkeypatch.setattr(train_loop, 'load_pretrained', recording_load)
  train_loop.train_stage(config, str(workdir), 'ensemble')
  monkeypatch.undo()
  return seen['init'], seen.get('loaded', seen['init'])


def _predictions(config, workdir):
  """[members, b, 16, 3] of the trained ensemble on fixed random maps."""
  stage = stages_lib.build(config, 'ensemble')
  loaded = checkpointing.load_variables(str(workdir), 'ensemble')
  maps = np.random.default_rng(5).uniform(size=(1, 4) + stage.dummy_input.shape[1:])
  out = stage.infer(loaded['variables'], jnp.asarray(maps, jnp.float32), loaded['norm'])
  return np.asarray(out)


def _assert_members_differ(pred):
  scale = np.abs(pred).max()
  for a in range(MEMBERS):
    for b in range(a):
      assert np.abs(pred[a] - pred[b]).max() > 1e-3 * scale, (a, b)


def test_members_start_apart_from_each_other_and_from_the_regressors(
    tiny_data_dir, tmp_path, monkeypatch):
  config = _config(tiny_data_dir)
  initial, _ = _train_recording_initial_variables(config, tmp_path, monkeypatch)
  fc = initial['params']['fc']['kernel']
  assert fc.shape[0] == MEMBERS
  # The regressors' initial variables, from the key train_loop gives the other stages.
  reg = stages_lib.build(config, 'regressor')
  assert reg.num_hyps == MEMBERS
  reg_fc = np.asarray(train_step.init_variables(
      reg, jax.random.split(jax.random.PRNGKey(config.regressor.train.seed))[0])
                      ['params']['fc']['kernel'])
  for b in range(MEMBERS):
    assert not np.allclose(fc[b], reg_fc[b]), f'member {b} starts as regressor hypothesis {b}'
    for a in range(b):
      assert not np.allclose(fc[a], fc[b]), (a, b)
  _assert_members_differ(_predictions(config, tmp_path))


def test_pretrained_members_share_only_the_files_layers(tiny_data_dir, tmp_path, monkeypatch):
  state = random_state_dict(torchvision_shapes((1, 1, 1, 1), 4))
  path = tmp_path / 'resnet.safetensors'
  save_file(state, str(path))
  config = _config(tiny_data_dir, pretrained=str(path))
  initial, loaded = _train_recording_initial_variables(config, tmp_path / 'work', monkeypatch)
  params, stats = loaded['params'], loaded['batch_stats']
  for m in range(MEMBERS):
    # The file's layers, in every member.
    np.testing.assert_array_equal(params['backbone']['layer2_0']['conv2']['kernel'][m],
                                  state['layer2.0.conv2.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params['backbone']['layer4_0']['bn3']['scale'][m],
                                  state['layer4.0.bn3.weight'])
    np.testing.assert_array_equal(stats['backbone']['stem']['bn1']['var'][m],
                                  state['bn1.running_var'])
    np.testing.assert_allclose(  # 6 input channels: the mean RGB filter x 3 / 6 (pretrained.py)
        params['backbone']['stem']['conv1']['kernel'][m],
        np.repeat(state['conv1.weight'].mean(1, keepdims=True) * 0.5, 6, 1).transpose(2, 3, 1, 0),
        rtol=1e-6)
    # The layers the file does not hold keep the member's own initialisation.
    for leaf in ('kernel', 'bias'):
      np.testing.assert_array_equal(params['fc'][leaf][m], initial['params']['fc'][leaf][m])
  # Every backbone leaf is the file's, hence equal in all members.
  for leaf in jax.tree.leaves({'p': params['backbone'], 's': stats['backbone']}):
    for m in range(1, MEMBERS):
      np.testing.assert_array_equal(leaf[m], leaf[0])
  for a in range(MEMBERS):
    for b in range(a):
      assert not np.allclose(params['fc']['kernel'][a], params['fc']['kernel'][b]), (a, b)
  _assert_members_differ(_predictions(config, tmp_path / 'work'))


def test_each_member_reads_its_own_stream_and_learns_its_column(tiny_data_dir):
  config = _config(tiny_data_dir)
  batch = next(train_loop.train_iterator(config, 'ensemble', (0, 1)))
  b = config.ensemble.train.batch_size
  assert batch['index'].shape == (b, MEMBERS) and batch['joints_3d'].shape == (b, MEMBERS, 16, 3)
  for m in range(MEMBERS):
    assert len(set(batch['index'][:, m])) == b  # one epoch's examples, each once
    for n in range(m):
      assert not np.array_equal(batch['index'][:, m], batch['index'][:, n]), (m, n)
  # Member m's targets are column m's poses, normalised (computed here with NumPy).
  stage = stages_lib.build(config, 'ensemble')
  norm = {'mean': np.full((16, 3), 7.0, np.float32), 'std': np.float32(300.0)}
  numeric = jax.tree.map(jnp.asarray, parallel.numeric_fields(batch))
  _, targets = stage.make_inputs(numeric, None, norm)
  joints = batch['joints_3d']
  rel = joints - joints[:, :, skeleton.ROOT:skeleton.ROOT + 1]
  want = np.moveaxis((rel - norm['mean']) / norm['std'], 1, 0)
  np.testing.assert_allclose(targets['pose'], want, rtol=1e-5, atol=1e-5)


def test_ensemble_streams_resume_where_each_member_stopped(tiny_data_dir):
  config = _config(tiny_data_dir)
  it = train_loop.train_iterator(config, 'ensemble', (0, 1))
  for _ in range(3):  # past the first epoch of the 16-example split
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(2)]
  resumed = train_loop.train_iterator(config, 'ensemble', (0, 1))
  resumed.set_state(state)
  for batch in want:
    np.testing.assert_array_equal(next(resumed)['index'], batch['index'])


def test_each_hypothesis_decays_on_its_own_validation_loss(tiny_data_dir, tmp_path, monkeypatch):
  """Hypothesis 0 keeps improving, hypothesis 1 is flat: only 1 decays, every `patience` evals."""
  config = tiny.get_config()
  config.data.data_dir = str(tiny_data_dir)
  config.regressor.train.update(schedule='plateau', plateau_patience=2, decay_factor=0.1)
  config = config_lib.finalize(config)
  tcfg = config.regressor.train
  stage = stages_lib.build(config, 'regressor')
  assert stage.num_hyps == 2
  scripted = np.array([[5, 4, 3, 2, 1, 0.5], [5, 5, 5, 5, 5, 5]], np.float32).T  # [eval, H]
  # The validation loss of evaluation i, per hypothesis (the state's step indexes it).
  monkeypatch.setattr(train_step, 'make_eval_loss',
                      lambda _: lambda state, batch, aux: jnp.asarray(scripted)[state.step])
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.ones((), np.float32)}
  state = train_step.create_state(train_step.init_variables(stage, jax.random.PRNGKey(0)),
                                  train_step.make_optimizer(tcfg), norm, jax.random.PRNGKey(1))
  writer = metric_writer.MetricWriter(str(tmp_path))
  plateau = train_loop._Plateau(config, stage, parallel.make_mesh(1), writer)  # pylint: disable=protected-access
  batch = next(plateau._batches())  # pylint: disable=protected-access
  for i in range(len(scripted)):
    state = plateau(state.replace(step=jnp.int32(i)), batch, None, i + 1)
  writer.close()
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  for h in range(2):
    want = _replay_plateau(scripted[:, h], tcfg.plateau_patience, tcfg.decay_factor)
    np.testing.assert_allclose([r[f'lr_scale_h{h}'] for r in records], want, rtol=1e-6)
    np.testing.assert_allclose([r[f'val_loss_h{h}'] for r in records], scripted[:, h])
  np.testing.assert_allclose(np.asarray(state.lr_scale), [1.0, 0.01], rtol=1e-6)


def test_train_step_applies_each_hypothesis_rate(tiny_data_dir):
  del tiny_data_dir
  config = tiny.get_config()
  config.regressor.train.update(optimizer='sgd', momentum=0.0, learning_rate=0.1)
  config = config_lib.finalize(config)
  stage = stages_lib.build(config, 'regressor')
  tcfg = config.regressor.train
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.float32(300.0)}
  state = train_step.create_state(train_step.init_variables(stage, jax.random.PRNGKey(0)),
                                  train_step.make_optimizer(tcfg), norm, jax.random.PRNGKey(1))
  batch = jax.tree.map(jnp.asarray, benchmark.synthetic_batch(config, 8))
  step = jax.jit(train_step.make_train_step(stage, tcfg))
  full, _ = step(state, batch, None)
  part, metrics = step(state.replace(lr_scale=jnp.asarray([1.0, 0.25])), batch, None)
  delta = lambda s: jax.tree.map(lambda a, b: np.asarray(a - b), s.params, state.params)
  for d_full, d_part, p in zip(jax.tree.leaves(delta(full)), jax.tree.leaves(delta(part)),
                               jax.tree.leaves(state.params)):
    ulp = np.spacing(np.abs(np.asarray(p[1])).max())  # the stored parameter's rounding
    np.testing.assert_allclose(d_part[0], d_full[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d_part[1], 0.25 * d_full[1], rtol=1e-5, atol=2 * ulp)
  assert max(np.abs(d[1]).max() for d in jax.tree.leaves(delta(part))) > 1e-4  # it trained
  np.testing.assert_allclose([metrics['learning_rate_h0'], metrics['learning_rate_h1']],
                             [0.1, 0.025], rtol=1e-6)
