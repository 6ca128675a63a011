"""Checkpoints that survive damage, a record of what they were trained with, metrics.

Small hand-made states (no training): each test saves steps whose contents it
knows, damages some of them the way a full disk, a cut copy or a stray `rm`
would, and checks what is read back against the values it saved.
"""

import glob
import json
import logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.experiment import config_lib
from deepskeleton_jax.experiment import metric_writer

STAGE = 'direct_rgb'


def _state(step: int) -> dict:
  """A state whose every value is `step` (what load_variables reads back)."""
  return {'params': {'dense': {'kernel': jnp.full((3, 4), float(step))}},
          'batch_stats': {'bn': {'mean': jnp.full((4,), float(step))}},
          'norm': {'mean': jnp.zeros((16, 3)), 'std': jnp.ones(())}}


def _save_steps(workdir, steps, keep=0):
  mngr = checkpointing.manager(str(workdir), STAGE, keep)
  for step in steps:
    checkpointing.save(mngr, step, _state(step), None)
  mngr.close()


def _step_dir(workdir, step) -> str:
  return os.path.join(checkpointing.checkpoint_dir(str(workdir), STAGE), str(step))


def _truncate_largest_chunk(step_dir):
  chunks = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
  path = max(chunks, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _empty(step_dir):
  for entry in os.listdir(step_dir):
    path = os.path.join(step_dir, entry)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _zero_every_file(step_dir):
  for path in glob.glob(os.path.join(step_dir, '**'), recursive=True):
    if os.path.isfile(path):
      open(path, 'w').close()


DAMAGE = {'truncated_chunk': _truncate_largest_chunk, 'no_metadata': _remove_metadata,
          'emptied': _empty, 'zeroed': _zero_every_file}


@pytest.mark.parametrize('keep,kept', [(0, [1, 2, 3, 4]), (2, [3, 4]), (1, [4])])
def test_keep_checkpoints_keeps_the_newest_n_and_zero_keeps_all(tmp_path, keep, kept):
  _save_steps(tmp_path, [1, 2, 3, 4], keep=keep)
  assert checkpointing.checkpoint_steps(str(tmp_path), STAGE) == kept


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_load_variables_falls_back_to_the_newest_readable_step(tmp_path, damage, caplog):
  _save_steps(tmp_path, [1, 2, 3])
  DAMAGE[damage](_step_dir(tmp_path, 3))
  with caplog.at_level(logging.WARNING):
    loaded = checkpointing.load_variables(str(tmp_path), STAGE)
  assert loaded['step'] == 2
  np.testing.assert_array_equal(loaded['variables']['params']['dense']['kernel'],
                                np.full((3, 4), 2.0))
  np.testing.assert_array_equal(loaded['variables']['batch_stats']['bn']['mean'],
                                np.full((4,), 2.0))
  skipped = [r.getMessage() for r in caplog.records if 'skipping checkpoint step' in r.getMessage()]
  assert len(skipped) == 1 and 'step 3 ' in skipped[0] and 'does not read completely (' in skipped[0]
  # Evaluation, prediction and export leave the damaged step where it is.
  assert os.path.isdir(_step_dir(tmp_path, 3))


def test_resume_restores_the_newest_readable_step_and_removes_newer_damaged_ones(tmp_path):
  _save_steps(tmp_path, [1, 2, 3, 4])
  _truncate_largest_chunk(_step_dir(tmp_path, 4))
  _remove_metadata(_step_dir(tmp_path, 3))
  mngr = checkpointing.manager(str(tmp_path), STAGE)
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))
  step, state = checkpointing.restore(mngr, STAGE, target, None)
  assert step == 2
  np.testing.assert_array_equal(state['params']['dense']['kernel'], np.full((3, 4), 2.0))
  # Training saves steps 3 and 4 again: the damaged ones are gone.
  checkpointing.save(mngr, 3, _state(3), None)
  mngr.close()
  assert checkpointing.checkpoint_steps(str(tmp_path), STAGE) == [1, 2, 3]


def test_no_readable_step_is_one_line_naming_the_folder_to_remove(tmp_path):
  _save_steps(tmp_path, [1, 2])
  _truncate_largest_chunk(_step_dir(tmp_path, 2))
  _empty(_step_dir(tmp_path, 1))
  folder = checkpointing.checkpoint_dir(str(tmp_path), STAGE)
  with pytest.raises(errors.InputError) as e:
    checkpointing.load_variables(str(tmp_path), STAGE)
  message = str(e.value)
  assert '\n' not in message
  assert f'remove the folder {folder} ' in message and 'steps 2, 1' in message


def test_other_shapes_are_a_config_error_not_a_damaged_step(tmp_path):
  """A config with another width must not make good checkpoints look unreadable."""
  _save_steps(tmp_path, [1, 2])
  mngr = checkpointing.manager(str(tmp_path), STAGE)
  wider = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))
  wider['params']['dense']['kernel'] = jax.ShapeDtypeStruct((3, 8), jnp.float32)
  with pytest.raises(errors.ConfigError,
                     match=r'params/dense/kernel with shape \(3, 4\), the config gives '
                           r'shape \(3, 8\)'):
    checkpointing.restore(mngr, STAGE, wider, None)
  mngr.close()
  assert checkpointing.checkpoint_steps(str(tmp_path), STAGE) == [1, 2]


def _config(**overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    group, *path, name = key.split('.')
    node = config[group]
    for part in path:
      node = node[part]
    node[name] = value
  return config_lib.finalize(config)


def _fake_checkpoint(workdir, stage):
  os.makedirs(os.path.join(checkpointing.checkpoint_dir(str(workdir), stage), '5'))


@pytest.mark.parametrize('stage,key,value,shown', [
    ('direct_rgb', 'direct_rgb.model.width', 8, '8'),
    ('regressor', 'hypotheses.crop_scales', (1.0, 1.25, 1.5), '(1.0, 1.25, 1.5)'),
    ('skeleton_net', 'hypotheses.stick_widths', (40.0, 50.0), '(40.0, 50.0)'),
    ('ensemble', 'ensemble.num_runs', 3, '3'),
    ('hourglass', 'hourglass.model.num_stacks', 2, '2'),
    ('lifting', 'lifting.model.hidden', 32, '32'),
])
def test_config_contradicting_the_record_is_refused_naming_key_and_values(
    tmp_path, stage, key, value, shown):
  trained = _config()
  checkpointing.record_trained_with(trained, str(tmp_path), stage)
  _fake_checkpoint(tmp_path, stage)
  checkpointing.check_trained_with(trained, str(tmp_path), stage)
  overrides = {key: value}
  if key == 'hypotheses.crop_scales':  # a third hypothesis
    overrides['hypotheses.stick_widths'] = (40.0, 60.0, 60.0)
  other = _config(**overrides)
  trained_value = checkpointing.trained_with(trained, stage)[key]
  with pytest.raises(errors.ConfigError) as e:
    checkpointing.check_trained_with(other, str(tmp_path), stage)
  message = str(e.value)
  assert message.startswith(f'config.{key}={shown}, but the {stage} checkpoints in ')
  assert f'were trained with {key}=' in message
  want = repr(tuple(trained_value)) if isinstance(trained_value, list) else repr(trained_value)
  assert f'{key}={want}' in message and '\n' not in message


def test_record_is_only_checked_against_existing_checkpoints(tmp_path):
  """After the user removes the checkpoints folder, another config may train."""
  checkpointing.record_trained_with(_config(), str(tmp_path), STAGE)
  checkpointing.check_trained_with(_config(**{'direct_rgb.model.width': 8}),
                                   str(tmp_path), STAGE)


def test_workdir_without_a_record_keeps_working(tmp_path):
  _fake_checkpoint(tmp_path, STAGE)
  checkpointing.check_trained_with(_config(**{'direct_rgb.model.width': 8}),
                                   str(tmp_path), STAGE)
  # The first record (hourglass loss only, stage-relative key) is still read.
  _fake_checkpoint(tmp_path, 'hourglass')
  (tmp_path / 'hourglass' / 'trained_with.json').write_text('{"loss": "integral"}')
  with pytest.raises(errors.ConfigError, match=r"trained with hourglass\.loss='integral'"):
    checkpointing.check_trained_with(_config(), str(tmp_path), 'hourglass')


def _steps(path):
  return [json.loads(line)['step'] for line in pathlib.Path(path).read_text().splitlines()]


def test_metrics_after_resume_do_not_repeat_steps(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path), tensorboard=False)
  for step in range(1, 6):
    writer.write(step, {'loss': float(step)})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 6, "lo')  # killed in the middle of a line
  writer = metric_writer.MetricWriter(str(tmp_path), tensorboard=False, start_step=3)
  for step in (4, 5):
    writer.write(step, {'loss': 10.0 + step})
  writer.close()
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5]
  assert [r['loss'] for r in records] == [1.0, 2.0, 3.0, 14.0, 15.0]


@pytest.mark.parametrize('mask', [0o022, 0o027, 0o077])
def test_written_files_get_the_umask_permissions(tmp_path, mask):
  previous = os.umask(mask)
  try:
    files.write_text(tmp_path / 'report.md', 'x')
    files.write_bytes(tmp_path / 'model.jax', b'x')
    assert files.umask() == mask
  finally:
    os.umask(previous)
  for name in ('report.md', 'model.jax'):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
