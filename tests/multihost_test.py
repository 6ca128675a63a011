"""Two real JAX processes (gloo over 127.0.0.1, 2 fake CPU devices each) vs one.

No mocks: the processes are `tests/multihost_worker.py` or `run.py` launched
with subprocess, joined by `jax.distributed`, with one global 4-device mesh.
The invariance tested: training on the same global batches gives the same
parameters whether the batch is fed by two processes (half the rows each,
through `jax.make_array_from_process_local_data`) or by one process with 4
devices, since every reduction (gradients, BatchNorm statistics) is over the
global batch. Also: evaluation gathered over two processes equals one
process's; SIGTERM to one process stops both at the same saved step; a process
that fails makes the other fail within the heartbeat timeout, not hang.

Note: only process 0 writes JAX's persistent compilation cache, and process 1's
cache keys differ (its devices do), so process 1 compiles every program on
every run, which makes these tests slow (15-60 s each on 2 busy cores).
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deepskeleton_jax.training import train_step
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
import multihost_worker

WORKER = REPO / 'tests' / 'multihost_worker.py'
TIMEOUT_S = 300
NUM_STEPS = 3


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(local_devices: int, cache: bool) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  # The worker is a script in tests/: it finds the package and configs here.
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
  env['JAX_ENABLE_COMPILATION_CACHE'] = str(cache).lower()
  return env


@contextlib.contextmanager
def _started(cmds: list[list[str]], logs: list[pathlib.Path], local_devices: int,
             cache: bool = True):
  """Starts the commands (output to `logs`); kills those still running on exit.

  A process left alone would otherwise wait at a collective for its dead peer.
  """
  procs = []
  try:
    for cmd, log in zip(cmds, logs):
      with open(log, 'w') as f:
        procs.append(subprocess.Popen(cmd, env=_env(local_devices, cache), stdout=f,
                                      stderr=subprocess.STDOUT, cwd=str(REPO)))
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _run_all(cmds: list[list[str]], logs: list[pathlib.Path], local_devices: int,
             cache: bool = True, timeout: float = TIMEOUT_S) -> None:
  """Runs the commands concurrently; all must exit 0 within `timeout` seconds.

  As soon as one fails (or time runs out) the others are killed.
  """
  with _started(cmds, logs, local_devices, cache) as procs:
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  report = '\n'.join(f'--- {log.name} (exit {p.returncode}):\n{log.read_text()[-3000:]}'
                     for p, log in zip(procs, logs))
  assert all(p.returncode == 0 for p in procs), report


def _assert_same_updates(actual: dict, expected: dict, initial: dict, what: str) -> None:
  """The updates (final - initial) agree to 1e-3 of each leaf's largest update.

  Reduction order alone changes an update by ~1e-6 of itself, a parameter
  with no true gradient (a bias before BatchNorm) by float noise (1e-5 of the
  largest update of all allowed), and the stored value by a rounding step (2
  ulps allowed); a real error (rows fed twice, BatchNorm statistics or
  gradients of one process only) changes the updates by O(1) of themselves.
  """
  assert sorted(actual) == sorted(expected) == sorted(initial), what
  updates = {k: expected[k] - initial[k] for k in expected}
  overall = max(np.abs(u).max() for u in updates.values())
  trained = 0
  for key, want in updates.items():
    scale = np.abs(want).max()
    trained += scale > 1e-3 * overall
    ulp = np.spacing(np.abs(expected[key]).max().astype(np.float32))
    np.testing.assert_allclose(actual[key] - initial[key], want, rtol=0,
                               atol=1e-3 * scale + 1e-5 * overall + 2 * ulp,
                               err_msg=f'{what} {key}')
  # Not all: residual branches behind zero-initialised BatchNorm scales and
  # biases before BatchNorm barely move in 3 steps.
  assert trained >= len(updates) // 5, f'{what}: only {trained} leaves trained'


def test_two_processes_train_like_one(tmp_path):
  """Regressor (2 stacked hypotheses): 3 steps in 2 processes == 1 process, 4 devices."""
  port = _free_port()
  cmds = [[sys.executable, str(WORKER), '--stage=regressor',
           f'--num_steps={NUM_STEPS}', f'--port={port}', '--num_processes=2',
           f'--process_id={i}', f'--out={tmp_path}', '--compile_delay_s=35'] for i in range(2)]
  _run_all(cmds, [tmp_path / f'worker{i}.log' for i in range(2)], local_devices=2)
  saved = dict(np.load(tmp_path / 'params.npz'))
  losses = saved.pop('losses')

  # The reference: this process, 4 of its 8 devices, the same global batches.
  assert jax.process_count() == 1 and jax.device_count() >= 4
  config = multihost_worker.sgd(multihost_worker.tiny_config(), 'regressor')
  mesh = parallel.make_mesh(config.parallel.hyp_axis, devices=jax.devices()[:4])
  initial, expected, expected_losses = multihost_worker.run_steps(
      config, 'regressor', mesh, NUM_STEPS)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  _assert_same_updates(saved, expected, initial, 'regressor params')


def test_hypothesis_axis_spanning_both_processes_trains_like_one(tmp_path):
  """hyp_axis=2 over 2 processes x 1 device: each process holds one hypothesis.

  The data axis has one row, held by both processes, so both must feed the
  whole global batch (replicas get identical data); each process feeding its
  own half trained each hypothesis on its host's half batch.
  """
  port = _free_port()
  cmds = [[sys.executable, str(WORKER), '--stage=regressor', f'--num_steps={NUM_STEPS}',
           f'--port={port}', '--num_processes=2', f'--process_id={i}', f'--out={tmp_path}',
           '--hyp_axis=2'] for i in range(2)]
  _run_all(cmds, [tmp_path / f'worker{i}.log' for i in range(2)], local_devices=1)
  saved = dict(np.load(tmp_path / 'params.npz'))
  losses = saved.pop('losses')
  config = multihost_worker.sgd(multihost_worker.tiny_config(), 'regressor')
  mesh = parallel.make_mesh(1, devices=jax.devices()[:1])  # the whole batch on one device
  initial, expected, expected_losses = multihost_worker.run_steps(
      config, 'regressor', mesh, NUM_STEPS)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  _assert_same_updates(saved, expected, initial, 'regressor params (hyp axis over processes)')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The tiny synthetic set with exactly one global batch (8) of train examples.

  Each epoch is then one batch, so 1 and 2 processes see the same global rows
  in the same order: process p reads positions [4p, 4p + 4) of the epoch's
  permutation, the single process all 8.
  """
  path = tmp_path_factory.mktemp('tfds8')
  config = multihost_worker.tiny_config(str(path))
  with config.unlocked():
    config.data.builder_kwargs.num_train = 8
  registry.prepare(config.data)
  return path


def _run_py(workdir, data_dir, num_steps, process_id=None, port=None, args=None):
  """run.py on the tiny config: by default, trains the lifting stage."""
  cmd = [sys.executable, str(REPO / 'run.py'),
         '--config=' + str(REPO / 'configs' / 'tiny.py'), f'--workdir={workdir}',
         f'--config.data.data_dir={data_dir}', '--config.data.builder_kwargs.num_train=8']
  cmd += args or ['--mode=train', '--config.stages=lifting',
                  f'--config.lifting.train.num_steps={num_steps}',
                  '--config.lifting.train.checkpoint_every=2',
                  '--config.lifting.train.optimizer=sgd',  # see multihost_worker.sgd
                  '--config.lifting.train.learning_rate=0.05']
  if process_id is None:
    return cmd + ['--config.parallel.distributed=no']
  return cmd + ['--config.parallel.distributed=yes',
                f'--config.parallel.coordinator_address=127.0.0.1:{port}',
                '--config.parallel.num_processes=2', f'--config.parallel.process_id={process_id}']


def _two_processes(workdir, data_dir, num_steps, logs):
  # With the persistent cache, process 0 reads programs that process 1 (whose
  # cache keys differ) still compiles for tens of seconds; gloo waits only
  # 30 s for a peer at a collective, so this also tests that run.py compiles
  # the train step on every process before any process runs it.
  port = _free_port()
  _run_all([_run_py(workdir, data_dir, num_steps, i, port) for i in range(2)], logs,
           local_devices=2)


def test_run_py_in_two_processes_writes_once_resumes_and_matches_one(data_dir, tmp_path):
  """run.py --mode=train in 2 processes: one metrics file, a resumable checkpoint."""
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  first = [tmp_path / f'first{i}.log' for i in range(2)]
  _two_processes(multi, data_dir, 2, first)
  for log in first:
    assert '2 local / 4 global devices' in log.read_text()
  stage_dir = multi / 'lifting'
  steps = [json.loads(l)['step'] for l in (stage_dir / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2]  # process 1 wrote nothing
  assert len(list((stage_dir / 'tensorboard').iterdir())) == 1
  data = stage_dir / 'checkpoints' / '2' / 'data'
  assert sorted(p.name for p in data.glob('process_*')) == ['process_0-of-2.json',
                                                            'process_1-of-2.json']

  second = [tmp_path / f'second{i}.log' for i in range(2)]
  _two_processes(multi, data_dir, NUM_STEPS, second)
  for log in second:
    assert 'resumed from step 2' in log.read_text()
  steps = [json.loads(l)['step'] for l in (stage_dir / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2, 3]

  _run_all([_run_py(single, data_dir, NUM_STEPS)], [tmp_path / 'single.log'], local_devices=4)
  got = checkpointing.load_variables(str(multi), 'lifting')
  want = checkpointing.load_variables(str(single), 'lifting')
  assert got['step'] == want['step'] == NUM_STEPS
  # The initial variables, from the same key as train_loop.train_stage uses.
  config = multihost_worker.tiny_config(str(data_dir))
  stage = stages_lib.build(config, 'lifting')
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.lifting.train.seed))
  initial = train_step.init_variables(stage, init_rng)
  flat = multihost_worker.flatten
  _assert_same_updates(flat(got['variables']), flat(want['variables']), flat(initial),
                       'lifting variables')
  for key, value in flat(want['norm']).items():
    np.testing.assert_allclose(flat(got['norm'])[key], value, rtol=1e-6, err_msg=key)


def test_run_py_fails_fast_when_one_process_fails(data_dir, tmp_path):
  """Process 1 cannot read its data: it exits at once (one error line), process 0 soon after.

  Without `parallel.fail_fast` both would wait for each other for 5 minutes
  (process 0 at a barrier, process 1 in `jax.distributed.shutdown`), then abort.
  """
  port = _free_port()
  cmds = [_run_py(tmp_path / 'work', data_dir if i == 0 else tmp_path / 'missing', 2, i, port)
          + ['--config.parallel.heartbeat_timeout_s=10'] for i in range(2)]
  logs = [tmp_path / f'fail{i}.log' for i in range(2)]
  start, ended = time.monotonic(), {}
  with _started(cmds, logs, local_devices=2) as procs:
    while len(ended) < 2 and time.monotonic() - start < 150:
      for i, p in enumerate(procs):
        if i not in ended and p.poll() is not None:
          ended[i] = time.monotonic() - start
      time.sleep(0.2)
  texts = [log.read_text() for log in logs]
  report = '\n'.join(f'--- process {i}:\n{t[-2000:]}' for i, t in enumerate(texts))
  assert sorted(ended) == [0, 1], f'still running after 150 s: {report}'
  # A user's mistake: one line naming the path, exit status 2, as in one process.
  assert procs[1].returncode == 2 and procs[0].returncode != 0, report
  assert 'error: Dataset synthetic' in texts[1] and str(tmp_path / 'missing') in texts[1], report
  assert 'Traceback' not in texts[1], report
  # Process 0 noticed the missing heartbeat (10 s) instead of waiting 5 minutes.
  assert 'stopped sending heartbeats' in texts[0], report
  assert ended[0] - ended[1] < 60, (ended, report)


def test_eval_in_two_processes_matches_one(data_dir, tmp_path):
  """Each process evaluates its half of the test split (padded to the batch);
  the gathered results equal one process's."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  train_args = ['--mode=train', '--config.stages=direct_rgb',
                '--config.direct_rgb.train.num_steps=2']
  _run_all([_run_py(one, data_dir, 0, args=train_args)], [tmp_path / 'train.log'],
           local_devices=4)
  shutil.copytree(one, two)
  # A global batch of 12 over 4 devices: each process pads its 4 examples to 6.
  eval_args = ['--mode=eval', '--config.stages=direct_rgb', '--config.eval.batch_size=12',
               '--config.eval.detections=ground_truth', '--config.eval.num_figures=0']
  _run_all([_run_py(one, data_dir, 0, args=eval_args)], [tmp_path / 'eval1.log'],
           local_devices=4)
  port = _free_port()
  _run_all([_run_py(two, data_dir, 0, i, port, args=eval_args) for i in range(2)],
           [tmp_path / f'eval2_{i}.log' for i in range(2)], local_devices=2)
  want = json.loads((one / 'eval' / 'results.json').read_text())
  got = json.loads((two / 'eval' / 'results.json').read_text())
  assert want['num_examples'] == got['num_examples'] == 8
  flat_want, flat_got = _numbers(want), _numbers(got)
  assert sorted(flat_want) == sorted(flat_got) and flat_want
  for key, value in flat_want.items():
    np.testing.assert_allclose(flat_got[key], value, rtol=1e-4, err_msg=key)


def _numbers(tree, prefix=''):
  """{path: number} of a JSON tree."""
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f'{prefix}/{key}').items()}
  if isinstance(tree, list):
    return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f'{prefix}/{i}').items()}
  return {prefix: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


def test_sigterm_to_one_process_stops_both_with_one_checkpoint(data_dir, tmp_path):
  """SIGTERM to process 1 only: both save the same step, exit 0, and resume."""
  work = tmp_path / 'work'
  port = _free_port()
  cmds = [_run_py(work, data_dir, 100_000, i, port) for i in range(2)]
  logs = [tmp_path / f'term{i}.log' for i in range(2)]
  metrics = work / 'lifting' / 'metrics.jsonl'
  with _started(cmds, logs, local_devices=2) as procs:
    deadline = time.monotonic() + TIMEOUT_S
    while not (metrics.exists() and metrics.read_text().count('\n') >= 3):
      assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, \
          '\n'.join(log.read_text()[-2000:] for log in logs)
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  texts = [log.read_text() for log in logs]
  assert codes == [0, 0], '\n'.join(t[-2000:] for t in texts)
  reached = json.loads(metrics.read_text().splitlines()[-1])['step']
  for text in texts:
    assert f'stopped at step {reached}' in text
  saved = sorted(int(p.name) for p in (work / 'lifting' / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert saved[-1] == reached

  rerun = [tmp_path / f'rerun{i}.log' for i in range(2)]
  _two_processes(work, data_dir, reached + 2, rerun)
  for log in rerun:
    assert f'resumed from step {reached}' in log.read_text()
  steps = [json.loads(l)['step'] for l in metrics.read_text().splitlines()]
  assert steps == list(range(1, reached + 3))
