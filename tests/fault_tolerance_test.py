"""Fault tolerance: SIGTERM, SIGKILL (also mid-save), damaged checkpoints, non-finite
updates, configs that contradict the checkpoints, killed dataset builds.

The preemption tests run real `python run.py --mode=train` processes on
configs/tiny.py (Direct RGB, the tiny synthetic set built once per module)
and signal them at chosen or random moments; reruns of the same command must
resume from the last complete checkpoint that reads (a damaged newer one is
skipped) and end where an uninterrupted run ends, with the same parameters
and each step once in metrics.jsonl.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepskeleton_jax import files
from deepskeleton_jax.data import registry
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
# of its N-th checkpoint (the state of that step is being written).
_KILL_IN_SAVE = """
import os, runpy, signal, sys
from deepskeleton_jax.experiment import checkpointing
original = checkpointing.DataIteratorHandler.save
calls = []
def save(self, directory, args):
  calls.append(directory)
  if len(calls) == %d:
    os.kill(os.getpid(), signal.SIGKILL)
  return original(self, directory, args)
checkpointing.DataIteratorHandler.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""
_KILL_IN_SECOND_SAVE = _KILL_IN_SAVE % 2


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
    # Each run continued from the last complete checkpoint, step after step,
    # and metrics.jsonl holds each step once.
    if before:
      assert f'resumed from step {before}' in log.read_text()
    steps = _steps(work)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= before
    assert (_checkpoints(work)[0] or [0])[-1] <= num_steps - 2  # still unfinished

  before = _checkpoints(work)[0][-1]
  log = _run(_cmd(work, data_dir, *flags), tmp_path / 'final.log')
  assert f'resumed from step {before}' in log
  assert _steps(work) == list(range(1, num_steps + 1))
  assert _checkpoints(work) == ([num_steps - 2, num_steps - 1, num_steps], [])
  _assert_same_variables(work, reference, num_steps)


def _assert_same_variables(work, reference, num_steps):

  """Exact resumption: restored state, rng and input position give the same result."""
  got = checkpointing.load_variables(str(work), STAGE)
  want = checkpointing.load_variables(str(reference), STAGE)
  assert got['step'] == want['step'] == num_steps
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got['variables'])[0],
                          jax.tree_util.tree_leaves(want['variables'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=jax.tree_util.keystr(path))


def _truncate_newest_chunk(step_dir: pathlib.Path) -> None:
  """Cuts the largest array file of a checkpoint step in half (a full disk, a cut copy)."""
  chunk = max((p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd'),
              key=lambda p: p.stat().st_size)
  with open(chunk, 'r+b') as f:
    f.truncate(chunk.stat().st_size // 2)


def test_sigkill_in_save_then_truncated_newest_step_resumes_from_the_one_before(
    data_dir, tmp_path):
  """Killed while saving step 3, then step 2 damaged: the rerun trains on from step 1."""
  num_steps = 6
  flags = _train_flags(num_steps, 1)
  reference = tmp_path / 'reference'
  _run(_cmd(reference, data_dir, *_train_flags(num_steps, 1000)), tmp_path / 'reference.log')

  work = tmp_path / 'work'
  with _Started(_cmd(work, data_dir, *flags, prefix=('-c', _KILL_IN_SAVE % 3)),
                tmp_path / 'killed.log') as p:
    assert p.wait() == -signal.SIGKILL, p.text()[-3000:]
  complete, partial = _checkpoints(work)
  assert complete == [1, 2] and partial, (complete, partial)
  assert _steps(work) == [1, 2, 3]
  _truncate_newest_chunk(pathlib.Path(checkpointing.checkpoint_dir(str(work), STAGE)) / '2')

  log = _run(_cmd(work, data_dir, *flags), tmp_path / 'rerun.log')
  skipped = [l for l in log.splitlines() if 'skipping checkpoint step' in l]
  assert len(skipped) == 1 and 'step 2 in ' in skipped[0], log[-3000:]
  assert 'it does not read completely (' in skipped[0]
  assert 'resumed from step 1' in log
  assert _steps(work) == list(range(1, num_steps + 1))
  assert _checkpoints(work) == ([num_steps - 2, num_steps - 1, num_steps], [])
  _assert_same_variables(work, reference, num_steps)


def _error_lines(out: subprocess.CompletedProcess) -> list[str]:
  assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  return [l for l in out.stderr.splitlines() if l.startswith('error:')]


def test_config_contradicting_checkpoints_is_refused_and_eval_skips_a_damaged_step(
    data_dir, tmp_path):
  work = tmp_path / 'work'
  _run(_cmd(work, data_dir, *_train_flags(2, 1)), tmp_path / 'train.log')
  metrics = (work / STAGE / 'metrics.jsonl').read_text()

  def run(mode, *args):
    cmd = [a for a in _cmd(work, data_dir, *args) if a != '--mode=train']
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
               JAX_PLATFORMS='cpu')
    return subprocess.run(cmd + [f'--mode={mode}'], capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=str(REPO), env=env)

  wider = f'--config.{STAGE}.model.width=8'
  want = (f'error: config.{STAGE}.model.width=8, but the {STAGE} checkpoints in '
          f'{work / STAGE / "checkpoints"} were trained with {STAGE}.model.width=4: pass '
          f'--config.{STAGE}.model.width=4 (or use another workdir)')
  for mode, args in (('eval', ()), ('train', _train_flags(4, 1))):
    out = run(mode, wider, *args)
    # Refused before any work: the error is all the run printed.
    assert out.stderr.splitlines() == [want] and out.returncode == 2, out.stderr[-3000:]
  assert _checkpoints(work) == ([1, 2], [])
  assert (work / STAGE / 'metrics.jsonl').read_text() == metrics
  assert not (work / 'eval').exists()

  # A workdir from before the record: the shapes tell, in one line.
  (work / STAGE / 'trained_with.json').unlink()
  lines = _error_lines(run('eval', wider))
  assert len(lines) == 1 and 'has batch_stats/' in lines[0], lines
  assert 'with shape (1, 4), the config gives shape (1, 8)' in lines[0]

  _truncate_newest_chunk(work / STAGE / 'checkpoints' / '2')
  out = run('eval', '--config.eval.detections=ground_truth')
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'{STAGE}: skipping checkpoint step 2 in ' in out.stderr
  assert json.loads((work / 'eval' / 'results.json').read_text())['num_examples'] == 8
  assert _checkpoints(work) == ([1, 2], [])  # evaluation removes nothing


def test_prepare_removes_stale_incomplete_folders_only_when_no_build_runs(tmp_path):
  """Killed builds leave TFDS's incomplete.* folders; the next build removes those
  of its own dataset version, and not while another build holds the lock."""
  config = _tiny_config(tmp_path / 'tfds')
  builder = registry.get_builder(config.data)
  parent = pathlib.Path(builder.data_dir).parent
  version = str(builder.version)
  stale = parent / f'incomplete.K1LLED_{version}'
  kept = [parent / 'incomplete.K1LLED_9.9.9', parent / f'incomplete-notes_{version}']
  for folder in [stale, *kept]:
    folder.mkdir(parents=True)
    (folder / 'train.tfrecord-00000-of-00001').write_bytes(b'half')

  root = pathlib.Path(builder.data_dir_root)
  errors_seen = []
  build = threading.Thread(target=lambda: _catching(errors_seen, registry.prepare,
                                                    config.data))
  with files.exclusive_lock(root / f'.{builder.name}-{version}.build.lock'):
    build.start()
    build.join(timeout=3)
    assert build.is_alive(), errors_seen  # waits for the lock's holder
    assert stale.is_dir() and not builder.is_prepared()
  build.join(timeout=TIMEOUT_S)
  assert not build.is_alive() and not errors_seen, errors_seen
  assert builder.is_prepared() and len(registry.data_source(config.data, 'train')) == 16
  assert not stale.exists()
  assert all(folder.is_dir() for folder in kept)


def _catching(errors_seen, fn, *args):
  try:
    fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    errors_seen.append(e)


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
