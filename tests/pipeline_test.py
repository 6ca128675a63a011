"""End-to-end tests of run.py's modes on configs/tiny.py.

One module-scoped fixture builds the tiny synthetic set and trains every tiny
stage for a few steps (in process); eval, predict and benchmark then run on
it. Resuming is tested with two real `python run.py` processes. The sharded
train step on 8 fake CPU devices is compared with a plain single-device step.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from deepskeleton_jax.training import benchmark as train_benchmark
from deepskeleton_jax.training import train_step
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.evaluation import evaluate
from deepskeleton_jax.experiment import metric_writer
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.inference import predict
from deepskeleton_jax.inference import predictor
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.training import train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def trained(tiny_pipeline):
  """(config, workdir) of every tiny stage trained once per session (tests/conftest.py)."""
  return tiny_pipeline.config(), tiny_pipeline.workdir


def test_train_writes_metrics_and_checkpoints(trained):
  config, workdir = trained
  for stage in config_lib.stage_list(config):
    lines = (pathlib.Path(workdir) / stage / 'metrics.jsonl').read_text().splitlines()
    steps = [json.loads(l)['step'] for l in lines]
    assert steps == [1, 2, 3], (stage, steps)
    assert all(np.isfinite(json.loads(l)['loss']) for l in lines)
    assert (pathlib.Path(workdir) / stage / 'checkpoints' / '3').is_dir()


def test_hourglass_loaded_with_another_loss_is_refused(trained, tmp_path):
  """Same parameters, different decoding: loading must fail, not decode garbage."""
  from deepskeleton_jax import errors  # pylint: disable=g-import-not-at-top
  from deepskeleton_jax.inference import pipeline  # pylint: disable=g-import-not-at-top
  mse, workdir = trained
  assert mse.hourglass.loss == 'mse'  # configs/tiny.py
  recorded = json.loads((pathlib.Path(workdir) / 'hourglass' / 'trained_with.json').read_text())
  assert recorded['hourglass.loss'] == 'mse'
  integral = mse.copy_and_resolve_references()
  integral.hourglass.loss = 'integral'
  with pytest.raises(errors.ConfigError,
                     match=r"config\.hourglass\.loss='integral'.*trained with hourglass\.loss="):
    pipeline.load_stages(integral, workdir, names=('hourglass',))
  assert 'hourglass' in pipeline.load_stages(mse, workdir, names=('hourglass',))
  # A workdir from before the record existed was trained with MSE.
  (tmp_path / 'hourglass' / 'checkpoints' / '3').mkdir(parents=True)
  checkpointing.check_trained_with(mse, str(tmp_path), 'hourglass')
  with pytest.raises(errors.ConfigError, match="trained with hourglass.loss='mse'"):
    checkpointing.check_trained_with(integral, str(tmp_path), 'hourglass')
  checkpointing.record_trained_with(integral, str(tmp_path), 'hourglass')
  checkpointing.check_trained_with(integral, str(tmp_path), 'hourglass')


def test_eval_writes_results_and_report(trained):
  config, workdir = trained
  results = evaluate.evaluate(config, workdir)
  out = pathlib.Path(workdir) / 'eval'
  assert json.loads((out / 'results.json').read_text())['num_examples'] == 8
  report = (out / 'report.md').read_text()
  for row in ('Direct RGB', 'Ours w/o Mul-Hyp', 'Ours w Mul-Hyp', 'Oracle', 'GT Ske'):
    assert row in report
  # The oracle picks the least 3D error per example: never worse than any hypothesis.
  hyp_rows = [v for k, v in results['mpjpe'].items() if k.startswith('hyp ')]
  assert results['mpjpe']['Oracle'] <= min(hyp_rows) + 1e-3
  assert list(out.glob('hypotheses_*.png'))


def test_eval_streams_batches_and_keeps_only_the_figures(trained, tmp_path, monkeypatch):
  """Scores accumulated over 2 batches equal one batch's; only num_figures examples kept."""
  config, workdir = trained
  kept_sizes = []
  monkeypatch.setattr(evaluate, '_figures', lambda lay, kept, out: kept_sizes.append(len(kept)))
  whole = evaluate.evaluate(config, workdir)
  streamed_config = config.copy_and_resolve_references()
  streamed_config.eval.batch_size = 4
  streamed = evaluate.evaluate(streamed_config, workdir)
  assert kept_sizes == [config.eval.num_figures] * 2
  assert streamed['num_examples'] == whole['num_examples'] == 8
  for table in ('mpjpe', 'pa_mpjpe'):
    for row, value in whole[table].items():
      np.testing.assert_allclose(streamed[table][row], value, rtol=1e-4, err_msg=f'{table} {row}')


def test_predict_on_a_real_image(trained, shared_data, tmp_path):
  config, workdir = trained
  image = shared_data / 'mpii_samples' / '004645041.jpg'
  with config.unlocked():
    config.predict.images = str(image)
    config.predict.output_dir = str(tmp_path)
  records = predict.predict(config, workdir)
  assert np.asarray(records[0]['joints_3d_mm']).shape == (16, 3)
  assert (tmp_path / '004645041.png').stat().st_size > 10_000
  saved = json.loads((tmp_path / '004645041.json').read_text())
  assert 0 <= saved['chosen_hypothesis'] < 2


def test_predict_rejects_bad_boxes():
  with pytest.raises(ValueError, match='config.predict.boxes'):
    predictor.parse_boxes('0 0 10', 1)


def test_sharded_step_matches_single_device(trained):
  """The same batch gives the same loss and update on a (4 data x 2 hyp) mesh and on one device."""
  config, _ = trained
  assert jax.device_count() == 8
  with config.unlocked():
    config.parallel.hyp_axis = 2
    # SGD: Adam divides by tiny gradients and amplifies float rounding noise.
    config.regressor.train.optimizer = 'sgd'
    config.regressor.train.learning_rate = 0.1
  stage = stages_lib.build(config, 'regressor')
  tcfg = config.regressor.train
  tx = train_step.make_optimizer(tcfg)
  rng = jax.random.PRNGKey(0)
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.float32(300.0)}
  variables = train_step.init_variables(stage, rng)
  state = train_step.create_state(variables, tx, norm, rng)
  before = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
  batch = train_benchmark.synthetic_batch(config, 8)
  step = train_step.make_train_step(stage, tcfg)
  plain_state, plain = jax.jit(step)(state, parallel.numeric_fields(batch), None)
  mesh = parallel.make_mesh(2)
  shard = parallel.state_sharding(mesh, state)
  sharded_fn = jax.jit(step, in_shardings=(shard, parallel.batch_sharding(mesh), None),
                       out_shardings=(shard, parallel.replicated(mesh)))
  sharded_state, sharded = sharded_fn(jax.device_put(state, shard),
                                      parallel.global_batch(batch, mesh), None)
  assert len(jax.tree_util.tree_leaves(sharded_state.params)[0].sharding.device_set) == 8
  np.testing.assert_allclose(float(sharded['loss']), float(plain['loss']), rtol=1e-5)
  for a, b, x0 in zip(jax.tree_util.tree_leaves(sharded_state.params),
                      jax.tree_util.tree_leaves(plain_state.params), before):
    update_a, update_b = np.asarray(a) - x0, np.asarray(b) - x0
    scale = max(np.abs(update_b).max(), 1e-12)
    np.testing.assert_allclose(update_a / scale, update_b / scale, atol=1e-3)


def test_benchmark_prints_json(trained, capsys, tmp_path):
  config, _ = trained
  with config.unlocked():
    config.benchmark.stages = 'direct_rgb'
    config.benchmark.grad_accum = (1, 4)  # (remat has its own test in resnet_test.py)
  results = train_benchmark.run(config, str(tmp_path))
  out = capsys.readouterr().out.splitlines()
  parsed = json.loads(out[0])
  assert parsed == json.loads((tmp_path / 'benchmark' / 'benchmark.json').read_text())
  rows = {(r['remat'], r['grad_accum']): r for r in results['rows']}
  assert sorted(rows) == [(False, 1), (False, 4)]
  assert all(r['stage'] == 'direct_rgb' and r['train_images_per_s'] > 0 for r in rows.values())
  assert rows[False, 1]['sharded_over_plain'] > 0  # references: the base row only
  assert 'sharded_over_plain' not in rows[False, 4]
  assert all(r['train_step_memory_bytes'] > 0 for r in rows.values())
  assert '| direct_rgb | float32 | no | 4 | 8 |' in '\n'.join(out)


def _run(args, workdir, data_dir):
  env = dict(os.environ)
  cmd = [sys.executable, str(REPO / 'run.py'), '--config=' + str(REPO / 'configs' / 'tiny.py'),
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}'] + args
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                        cwd=str(REPO))


def test_resume_after_exit_continues_without_repeats(trained, tmp_path):
  config, _ = trained
  data_dir = config.data.data_dir
  args = ['--mode=train', '--config.stages=direct_rgb', '--config.direct_rgb.train.checkpoint_every=2']
  first = _run(args + ['--config.direct_rgb.train.num_steps=2'], tmp_path, data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _run(args + ['--config.direct_rgb.train.num_steps=4'], tmp_path, data_dir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'resumed from step 2' in second.stderr
  lines = (tmp_path / 'direct_rgb' / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [1, 2, 3, 4]


def test_bad_config_value_names_the_key(tmp_path):
  out = _run(['--mode=train', '--config.data.name=nope'], tmp_path, tmp_path)
  assert out.returncode != 0
  assert 'config.data.name' in out.stderr


def test_unknown_config_key_fails(tmp_path):
  out = _run(['--mode=train', '--config.train.nonexistent=1'], tmp_path, tmp_path)
  assert out.returncode != 0
  assert 'nonexistent' in out.stderr or 'train' in out.stderr


def test_pseudo3d_lifts_every_person(trained, tmp_path):
  config, workdir = trained
  from deepskeleton_jax.evaluation import pseudo3d  # pylint: disable=g-import-not-at-top
  with config.unlocked():
    config.predict.output_dir = str(tmp_path)
  path = pseudo3d.write_pseudo_3d(config, workdir)
  poses = np.load(path)
  assert len(poses.files) == 16 + 8  # every train and test person of the tiny set
  pose = poses[poses.files[0]]
  assert pose.shape == (16, 3) and np.all(np.isfinite(pose))
  np.testing.assert_allclose(pose[7], 0.0, atol=1e-3)  # root-relative (thorax)



def _replay_plateau(vals, patience, factor):
  """The plateau rule, independently: lr_scale after each validation loss."""
  best, bad, scale, out = np.inf, 0, 1.0, []
  for v in vals:
    if v < best - 1e-6:
      best, bad = v, 0
    else:
      bad += 1
      if bad >= patience:
        scale, bad = scale * factor, 0
    out.append(scale)
  return out


def test_plateau_schedule_decays_after_patience(trained, tmp_path, monkeypatch):
  config, _ = trained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.direct_rgb.train.update(schedule='plateau', plateau_every=1, plateau_patience=1,
                                   num_steps=4, checkpoint_every=4)
  tcfg = config.direct_rgb.train
  opened = []
  make_iterator = input_pipeline.make_iterator
  monkeypatch.setattr(input_pipeline, 'make_iterator',
                      lambda data, split, *a, **k: opened.append(split) or
                      make_iterator(data, split, *a, **k))
  train_loop.train_stage(config, str(tmp_path), 'direct_rgb')
  # Training reads the train split and the held-out validation split, never the test split.
  assert set(opened) == {config.data.train_split, config.data.val_split}
  assert config.data.eval_split not in opened
  records = [json.loads(l) for l in
             (tmp_path / 'direct_rgb' / 'metrics.jsonl').read_text().splitlines()]
  vals = [r for r in records if 'val_loss' in r]
  assert [r['step'] for r in vals] == [1, 2, 3, 4]
  scales = _replay_plateau([r['val_loss'] for r in vals], 1, tcfg.decay_factor)
  np.testing.assert_allclose([r['lr_scale'] for r in vals], scales, rtol=1e-6)
  # The rate of step k + 1 carries the scale decided at step k.
  rates = {r['step']: r['learning_rate'] for r in records if 'learning_rate' in r}
  np.testing.assert_allclose([rates[k] for k in (2, 3, 4)],
                             [tcfg.learning_rate * s for s in scales[:3]], rtol=1e-5)

  # The same state evaluated twice cannot improve: the second call decays.
  stage = stages_lib.build(config, 'direct_rgb')
  mesh = parallel.make_mesh(1)
  state = checkpointing.load_variables(str(tmp_path), 'direct_rgb')
  tx = train_step.make_optimizer(tcfg)
  state = train_step.create_state(state['variables'], tx, state['norm'], jax.random.PRNGKey(0))
  writer = metric_writer.MetricWriter(str(tmp_path / 'again'))
  plateau = train_loop._Plateau(config, stage, mesh, writer)  # pylint: disable=protected-access
  batch = next(plateau._batches())  # pylint: disable=protected-access
  for want in (1.0, tcfg.decay_factor, tcfg.decay_factor ** 2):
    state = plateau(state, batch, None, 0)
    np.testing.assert_allclose(np.asarray(state.lr_scale), [want], rtol=1e-6)
  writer.close()
