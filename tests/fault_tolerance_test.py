"""Fault tolerance of training: SIGTERM, SIGKILL (also mid-save), non-finite updates.

The preemption tests run real `python run.py --mode=train` processes on
configs/tiny.py (Direct RGB, the tiny synthetic set built once per module)
and signal them at chosen or random moments; reruns of the same command must
resume from the last complete checkpoint and end where an uninterrupted run
ends, with the same parameters.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax.training import benchmark as train_benchmark
from deepskeleton_jax.training import train_step
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.training import train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]
from configs import tiny

STAGE = 'direct_rgb'
TIMEOUT_S = 180

# Runs run.py, SIGKILLing itself when it starts writing the iterator position
# of its second checkpoint (the state of that step is being written).
_KILL_IN_SECOND_SAVE = """
import os, runpy, signal, sys
from deepskeleton_jax.experiment import checkpointing
original = checkpointing.DataIteratorHandler.save
calls = []
def save(self, directory, args):
  calls.append(directory)
  if len(calls) == 2:
    os.kill(os.getpid(), signal.SIGKILL)
  return original(self, directory, args)
checkpointing.DataIteratorHandler.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _tiny_config(data_dir=None):
  config = tiny.get_config()
  if data_dir is not None:
    config.data.data_dir = str(data_dir)
  return config_lib.finalize(config)


@pytest.fixture(scope='module')
def data_dir(tiny_data_dir):
  return tiny_data_dir


def _cmd(workdir, data_dir, *args, prefix=()):
  return [sys.executable, *prefix, str(REPO / 'run.py'), '--mode=train',
          '--config=' + str(REPO / 'configs' / 'tiny.py'), f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.stages={STAGE}',
          f'--config.{STAGE}.train.log_every=1', *args]


def _train_flags(num_steps, checkpoint_every):
  return [f'--config.{STAGE}.train.num_steps={num_steps}',
          f'--config.{STAGE}.train.checkpoint_every={checkpoint_every}']


class _Started:
  """A process writing to a log file; killed on leaving the block if still alive.

  One CPU device: with conftest's 8, every save slices each replicated array
  8 ways and a run takes twice as long; sharded saves and restores are
  covered by multihost_test.py.
  """

  def __init__(self, cmd, log: pathlib.Path):
    self.log = log
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
               JAX_PLATFORMS='cpu')
    with open(log, 'w') as f:
      self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(REPO),
                                   env=env)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()

  def wait(self) -> int:
    try:
      return self.proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f'{self.log.name}: no exit within {TIMEOUT_S} s:\n{self.text()[-3000:]}')

  def text(self) -> str:
    return self.log.read_text()


def _run(cmd, log: pathlib.Path) -> str:
  """Runs to the end; returns the log. Fails unless the exit status is 0."""
  with _Started(cmd, log) as p:
    assert p.wait() == 0, p.text()[-3000:]
    return p.text()


def _steps(workdir) -> list[int]:
  path = pathlib.Path(workdir) / STAGE / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(l)['step'] for l in path.read_text().splitlines()]


def _wait_for_steps(p: _Started, workdir, count: int) -> None:
  """Waits until metrics.jsonl holds `count` lines (the process still running)."""
  path = pathlib.Path(workdir) / STAGE / 'metrics.jsonl'
  deadline = time.monotonic() + TIMEOUT_S
  while (path.read_text().count('\n') if path.exists() else 0) < count:
    if p.proc.poll() is not None:
      pytest.fail(f'exited ({p.proc.returncode}) before {count} logged steps:\n'
                  f'{p.text()[-3000:]}')
    if time.monotonic() > deadline:
      pytest.fail(f'fewer than {count} logged steps after {TIMEOUT_S} s')
    time.sleep(0.02)


def _checkpoints(workdir) -> tuple[list[int], list[str]]:
  """(complete checkpoint steps, other entries such as half-written ones)."""
  path = pathlib.Path(checkpointing.checkpoint_dir(str(workdir), STAGE))
  if not path.is_dir():
    return [], []
  names = [p.name for p in path.iterdir()]
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if not n.isdigit())


@pytest.mark.parametrize('checkpoint_every', [1000, 1])
def test_sigterm_saves_exits_0_and_rerun_continues(data_dir, tmp_path, checkpoint_every):
  """checkpoint_every=1: the SIGTERM step is also a regular checkpoint step."""
  work = tmp_path / 'work'
  with _Started(_cmd(work, data_dir, *_train_flags(100_000, checkpoint_every)),
                tmp_path / 'first.log') as p:
    _wait_for_steps(p, work, 3)
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 0, p.text()[-3000:]
  reached = _steps(work)[-1]
  assert _steps(work) == list(range(1, reached + 1))
  assert f'stopped at step {reached}' in p.text()
  complete, partial = _checkpoints(work)
  assert complete[-1] == reached and not partial

  log = _run(_cmd(work, data_dir, *_train_flags(reached + 3, checkpoint_every)),
             tmp_path / 'rerun.log')
  assert f'resumed from step {reached}' in log
  assert _steps(work) == list(range(1, reached + 4))  # no repeats, no gaps
  assert _checkpoints(work)[0][-1] == reached + 3


def test_sigkill_anywhere_then_rerun_matches_uninterrupted(data_dir, tmp_path):
  """Kills at random moments (mostly inside saves) and once surely inside a save."""
  num_steps = 16
  flags = _train_flags(num_steps, 1)
  reference = tmp_path / 'reference'
  # Checkpoint cadence does not change training; the reference saves only at the end.
  _run(_cmd(reference, data_dir, *_train_flags(num_steps, 1000)), tmp_path / 'reference.log')

  work = tmp_path / 'work'
  rng = random.Random(0)
  runs = [('random', 0), ('random', 1), ('random', 2), ('in_save', 3)]
  for kind, i in runs:
    before = (_checkpoints(work)[0] or [0])[-1]
    logged = len(_steps(work))
    log = tmp_path / f'killed{i}.log'
    if kind == 'random':
      with _Started(_cmd(work, data_dir, *flags), log) as p:
        _wait_for_steps(p, work, logged + rng.randint(1, 3))
        time.sleep(rng.uniform(0.0, 0.3))
        p.proc.kill()
        assert p.wait() == -signal.SIGKILL, p.text()[-3000:]
    else:
      with _Started(_cmd(work, data_dir, *flags, prefix=('-c', _KILL_IN_SECOND_SAVE)),
                    log) as p:
        assert p.wait() == -signal.SIGKILL, p.text()[-3000:]
      complete, partial = _checkpoints(work)
      assert complete[-1] == before + 1, (complete, partial)
      assert partial, 'the second save was not left half-written'
    # Each run continued from the last complete checkpoint, step after step.
    if before:
      assert f'resumed from step {before}' in log.read_text()
    new = _steps(work)[logged:]
    assert new == list(range(before + 1, before + 1 + len(new)))
    assert (_checkpoints(work)[0] or [0])[-1] <= num_steps - 2  # still unfinished

  before = _checkpoints(work)[0][-1]
  log = _run(_cmd(work, data_dir, *flags), tmp_path / 'final.log')
  assert f'resumed from step {before}' in log
  steps = _steps(work)
  assert steps[-1] == num_steps and sorted(set(steps)) == list(range(1, num_steps + 1))
  assert _checkpoints(work) == ([num_steps - 2, num_steps - 1, num_steps], [])

  got = checkpointing.load_variables(str(work), STAGE)
  want = checkpointing.load_variables(str(reference), STAGE)
  assert got['step'] == want['step'] == num_steps
  # Exact resumption: restored state, rng and input position give the same result.
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got['variables'])[0],
                          jax.tree_util.tree_leaves(want['variables'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def nan_step():
  """The tiny Direct RGB stage, a state at step 5, its jitted train step."""
  config = _tiny_config()
  stage = stages_lib.build(config, STAGE)
  tcfg = config[STAGE].train
  tx = train_step.make_optimizer(tcfg)
  rng = jax.random.PRNGKey(0)
  variables = train_step.init_variables(stage, rng)
  norm = {'mean': np.zeros((16, 3), np.float32), 'std': np.float32(300.0)}
  state = train_step.create_state(variables, tx, norm, rng).replace(step=jnp.int32(5))
  return config, state, jax.jit(train_step.make_train_step(stage, tcfg))


def _batch(config, nan: bool, seed: int):
  batch = parallel.numeric_fields(train_benchmark.synthetic_batch(config, 4, seed=seed))
  if nan:
    batch['joints_3d'][2, 7, 1] = np.nan
  return batch


def _same(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_nonfinite_update_is_skipped_and_recorded(nan_step):
  config, state, step = nan_step
  bad, metrics = step(state, _batch(config, True, 0), None)
  assert not np.isfinite(float(metrics['loss']))
  assert _same(bad.params, state.params)
  assert _same(bad.batch_stats, state.batch_stats)
  assert _same(bad.opt_state, state.opt_state)
  assert int(bad.step) == 6
  assert int(bad.nonfinite_steps) == 1 and int(bad.first_nonfinite) == 5

  # Later finite steps train again; a later bad one is counted, the first kept.
  good, metrics = step(bad, _batch(config, False, 1), None)
  assert np.isfinite(float(metrics['loss'])) and not _same(good.params, bad.params)
  again, _ = step(good, _batch(config, True, 2), None)
  assert _same(again.params, good.params)
  assert int(again.nonfinite_steps) == 2 and int(again.first_nonfinite) == 5


def test_nonfinite_policy_stop_raises_naming_the_step_skip_does_not(nan_step):
  config, state, step = nan_step
  bad, _ = step(state, _batch(config, True, 0), None)
  tcfg = config[STAGE].train
  assert tcfg.nonfinite == 'stop'
  # Steps are counted from 1 in logs, metrics and checkpoints: index 5 is step 6.
  with pytest.raises(FloatingPointError, match='non-finite .* at step 6;'):
    train_loop._check_finite(bad, tcfg)  # pylint: disable=protected-access
  train_loop._check_finite(state, tcfg)  # pylint: disable=protected-access
  with tcfg.unlocked():
    tcfg.nonfinite = 'skip'
  train_loop._check_finite(bad, tcfg)  # pylint: disable=protected-access
