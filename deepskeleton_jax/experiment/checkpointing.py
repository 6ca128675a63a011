"""Orbax checkpoints of a stage: train state plus each process's input position.

Layout: `<workdir>/<stage>/checkpoints/<step>/{state,data}`. `state` is the
TrainState (Orbax StandardSave); `data` holds one JSON file per process with
its input iterator's state, so a resumed run neither repeats nor skips
examples. Orbax writes each step to a temporary directory and renames it when
complete, so a process killed mid-save never leaves a step that looks
restorable but is not. A step damaged afterwards (a truncated or deleted
file) is skipped with a warning: training resumes from, and evaluation,
prediction and export load, the newest step that reads completely.

Beside the checkpoints, `<workdir>/<stage>/trained_with.json` records the
config values that fix the stage's variables (model sizes, hypotheses, the
hourglass loss); a config that contradicts them is refused with one line
naming the key before any work.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any, Callable

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from etils import epath
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from deepskeleton_jax import errors
from deepskeleton_jax import files
from deepskeleton_jax.experiment import config_lib


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves `iterator.get_state()` per process; restores with `set_state`."""

  def save(self, directory: epath.Path, args: 'DataIteratorSave') -> None:
    state = args.iterator.get_state()
    if isinstance(state, bytes):
      payload = {'bytes': base64.b64encode(state).decode('ascii')}
    else:
      payload = {'json': state}
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    (epath.Path(directory) / name).write_text(json.dumps(payload))

  def restore(self, directory: epath.Path, args: 'DataIteratorRestore') -> Any:
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    path = epath.Path(directory) / name
    if not path.exists():
      raise ValueError(f'{path} is missing: the checkpoint was written by a run '
                       'with a different number of processes')
    payload = json.loads(path.read_text())
    state = (base64.b64decode(payload['bytes']) if 'bytes' in payload
             else payload['json'])
    args.iterator.set_state(state)
    return args.iterator

  def structure(self, directory):  # Required by the interface.
    del directory
    return None

  def metadata(self, directory):
    del directory
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


# Config keys (relative to the stage's group) that fix the shapes or the meaning
# of a stage's trained variables; `record_trained_with` writes their values
# beside the checkpoints and `check_trained_with` refuses a config that differs.
_RESNET_KEYS = ('model.stage_sizes', 'model.width')
_STAGE_KEYS = {
    'skeleton_net': _RESNET_KEYS + ('model.decoder_width',),
    'regressor': _RESNET_KEYS,
    'direct_rgb': _RESNET_KEYS,
    'ensemble': _RESNET_KEYS + ('num_runs',),
    'hourglass': ('model.num_stacks', 'model.num_features', 'model.depth', 'loss'),
    'lifting': ('model.hidden', 'model.num_blocks'),
}
# Stages with one set of variables per hypothesis (crop scale, stick width).
_HYPOTHESIS_STAGES = ('skeleton_net', 'regressor')
_HYPOTHESIS_KEYS = ('hypotheses.crop_scales', 'hypotheses.stick_widths')
# What checkpoints written before a key was recorded were trained with.
_LEGACY = {'hourglass.loss': 'mse'}
_RECORD = 'trained_with.json'


def _stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), stage)


def checkpoint_dir(workdir: str, stage: str) -> str:
  return os.path.join(_stage_dir(workdir, stage), 'checkpoints')


def checkpoint_steps(workdir: str, stage: str) -> list[int]:
  """The steps of a stage's checkpoint folders (complete or not), ascending."""
  path = checkpoint_dir(workdir, stage)
  if not os.path.isdir(path):
    return []
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def trained_with(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """The config values that fix a stage's variables, by full key (JSON values).

  Args:
    config: the experiment config.
    stage: the stage name.

  Returns:
    {'<stage>.model.width': 64, ..., 'hypotheses.stick_widths': [...]}; the
    hypotheses as the paired lists that `config_lib.hypothesis_list` gives.
  """
  keys = [f'{stage}.{k}' for k in _STAGE_KEYS.get(stage, ())]
  values = {}
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    values[key] = value
  if stage in _HYPOTHESIS_STAGES:
    pairs = config_lib.hypothesis_list(config)
    values[_HYPOTHESIS_KEYS[0]] = [c for c, _ in pairs]
    values[_HYPOTHESIS_KEYS[1]] = [w for _, w in pairs]
  return json.loads(json.dumps(values))


def _read_record(path: str, stage: str) -> dict[str, Any]:
  """A `trained_with.json` by full key ({} without one); early records used the
  stage-relative key ('loss')."""
  if not os.path.exists(path):
    return {}
  try:
    recorded = json.loads(epath.Path(path).read_text())
  except ValueError as e:
    raise errors.InputError(f'{path} is not valid JSON ({e}): remove it to train or '
                            'load the stage without the record') from None
  return {k if '.' in k else f'{stage}.{k}': v for k, v in recorded.items()}


def _shown(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _as_flag(value: Any) -> str:
  if isinstance(value, list):
    return f'"{tuple(value)}"'
  return value if isinstance(value, str) else str(value)


def check_trained_with(config, workdir: str, stage: str) -> None:
  """Refuses a config that contradicts the stage's checkpoints (if it has any).

  Compares the values `record_trained_with` wrote beside the checkpoints with
  the config's; a workdir without the record (trained before it existed)
  passes, except that its hourglass was trained with loss='mse'.

  Args:
    config: the experiment config.
    workdir: the experiment directory.
    stage: the stage name.

  Raises:
    errors.ConfigError: naming the key, the checkpoint's value and the config's
      (e.g. another `model.width`, another number of hypotheses, an hourglass
      trained with `loss='mse'` loaded with `loss='integral'`).
  """
  if not checkpoint_steps(workdir, stage):
    return
  path = os.path.join(_stage_dir(workdir, stage), _RECORD)
  recorded = _read_record(path, stage)
  for key, wanted in trained_with(config, stage).items():
    if key not in recorded and key not in _LEGACY:
      continue
    trained = recorded.get(key, _LEGACY.get(key))
    if trained != wanted:
      raise errors.ConfigError(
          f'config.{key}={_shown(wanted)}, but the {stage} checkpoints in '
          f'{checkpoint_dir(workdir, stage)} were trained with {key}={_shown(trained)}: '
          f'pass --config.{key}={_as_flag(trained)} (or use another workdir)')


def record_trained_with(config, workdir: str, stage: str) -> None:
  """Writes the values `check_trained_with` compares (process 0; atomic)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(_stage_dir(workdir, stage), _RECORD)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_text(path, json.dumps(trained_with(config, stage), indent=1))


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/Conv_0/kernel': shape} of the params and batch statistics of a tree
  (a TrainState, a variables dict or Orbax metadata)."""
  def name(entry):
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  shapes = {'/'.join(name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, 'shape')}
  return {k: v for k, v in shapes.items() if k.split('/')[0] in ('params', 'batch_stats')}


def check_shapes(stage: str, where: str, saved: Any, expected: Any) -> None:
  """Refuses checkpointed variables whose shapes the config does not give.

  The net under `check_trained_with` for workdirs without a record: a wrong
  `model.width` then fails here with one line instead of deep in Orbax or Flax.

  Args:
    stage: the stage name.
    where: the checkpoint (folder and step) for the message.
    saved: the checkpoint's tree (arrays or metadata with `.shape`).
    expected: the config's tree (e.g. from `jax.eval_shape`).

  Raises:
    errors.ConfigError: naming the first differing variable and both shapes.
  """
  got, want = _shapes_by_path(saved), _shapes_by_path(expected)
  for key in sorted(set(got) | set(want)):
    if got.get(key) != want.get(key):
      has = lambda shapes: (f'shape {shapes[key]}' if key in shapes else 'no such variable')
      raise errors.ConfigError(
          f'the {stage} checkpoint {where} has {key} with {has(got)}, the config gives '
          f'{has(want)}: the config\'s {stage} model or hypotheses settings differ from '
          'the ones it was trained with; use those, or another workdir')


def manager(workdir: str, stage: str, keep: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager for a stage's state and input position.

  Args:
    workdir: the experiment directory.
    stage: the stage name.
    keep: how many of the newest checkpoints to keep; 0 keeps all.

  Returns:
    The manager (creates the folder).
  """
  return ocp.CheckpointManager(
      checkpoint_dir(workdir, stage), item_names=('state', 'data'),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': DataIteratorHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, iterator: Any,
         wait: bool = True) -> None:
  """Saves the state and the iterator position at `step`."""
  args = {'state': ocp.args.StandardSave(state)}
  if iterator is not None:
    args['data'] = DataIteratorSave(iterator)
  mngr.save(step, args=ocp.args.Composite(**args), force=True)
  if wait:
    mngr.wait_until_finished()


def _all_processes(ok: bool) -> bool:
  """Whether every process got `ok` (all must restore the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _reason(e: BaseException) -> str:
  """The innermost cause of a failed read, shortened (TensorStore appends its spec)."""
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  text = ' '.join(str(e).split(' [tensorstore_spec=')[0].split())
  return f'{type(e).__name__}: {text[:300]}{"..." if len(text) > 300 else ""}'


def newest_readable(mngr: ocp.CheckpointManager, stage: str, read: Callable[[int], Any],
                    remove_unreadable: bool = False) -> tuple[int, Any] | None:
  """`(step, read(step))` of the newest step that reads completely.

  A step that fails to read (a truncated or missing file, e.g. after a full
  disk or a copy cut short) is skipped with a warning naming the step and
  why; a user error raised by `read` (a config that contradicts the
  checkpoint) is not a bad step and stops the search.

  Args:
    mngr: the stage's manager.
    stage: the stage name (for messages).
    read: reads one step; raises if it cannot.
    remove_unreadable: delete the unreadable steps newer than the one read
      (training: it saves those steps again).

  Returns:
    The step and what `read` returned, or None when there are no steps.

  Raises:
    errors.InputError: no step reads; names the folder to remove.
  """
  skipped = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      result, problem = read(step), None
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise many kinds.
      result, problem = None, _reason(e)
    if not _all_processes(problem is None):
      problem = problem or 'another process could not read it'
      logging.warning('%s: skipping checkpoint step %d in %s: it does not read completely '
                      '(%s)', stage, step, mngr.directory, problem)
      skipped.append((step, problem))
      continue
    if remove_unreadable:
      for bad, _ in skipped:
        logging.warning('%s: removing the unreadable checkpoint step %d', stage, bad)
        mngr.delete(bad)
    return step, result
  if not skipped:
    return None
  raise errors.InputError(
      f'no checkpoint of stage {stage!r} reads completely (steps '
      f'{", ".join(str(s) for s, _ in skipped)}; step {skipped[0][0]}: {skipped[0][1]}): '
      f'remove the folder {mngr.directory} and train the stage again')


def restore(mngr: ocp.CheckpointManager, stage: str, abstract_state: Any,
            iterator: Any) -> tuple[int, Any] | None:
  """Restores the newest readable step's state and the iterator's position.

  Unreadable newer steps are skipped (logged) and deleted, since training
  saves them again.

  Args:
    mngr: from `manager`.
    stage: the stage name.
    abstract_state: the state's structure, shapes and shardings.
    iterator: the input iterator (its position is restored in place), or None.

  Returns:
    (step, state), or None without checkpoints.

  Raises:
    errors.ConfigError: the checkpoint's shapes are not the config's.
    errors.InputError: no step reads.
  """
  def read(step):
    saved = mngr.item_metadata(step)['state']
    if saved is None or not _shapes_by_path(saved):
      raise ValueError('its state has no readable metadata (state/_METADATA)')
    check_shapes(stage, f'step {step} in {mngr.directory}', saved, abstract_state)
    args = {'state': ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
      args['data'] = DataIteratorRestore(iterator)
    return mngr.restore(step, args=ocp.args.Composite(**args))['state']

  return newest_readable(mngr, stage, read, remove_unreadable=True)


def load_variables(workdir: str, stage: str) -> dict[str, Any]:
  """Loads a trained stage's variables for inference (no optimizer state).

  The newest step that reads completely: unreadable newer steps are skipped
  with a warning (and left in place).

  Args:
    workdir: the experiment's work directory.
    stage: the stage name.

  Returns:
    {'variables': {'params', 'batch_stats'} stacked over hypotheses,
     'norm': pose normalisation, 'step': int}.

  Raises:
    errors.CheckpointNotFoundError: naming the expected checkpoint directory.
    errors.InputError: no step reads; names the folder to remove.
  """
  path = checkpoint_dir(workdir, stage)
  found = None
  if os.path.isdir(path):
    mngr = ocp.CheckpointManager(path, item_names=('state', 'data'),
                                 item_handlers={'state': ocp.StandardCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(create=False))
    # Replicated over this run's devices: the saved shardings may name devices
    # that do not exist here (e.g. trained by 2 processes, evaluated by 1).
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ('d',)), P())

    def read(step):
      target = jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
          mngr.item_metadata(step)['state'])
      return mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))['state']

    try:
      found = newest_readable(mngr, stage, read)
    finally:
      mngr.close()
  if found is None:
    raise errors.CheckpointNotFoundError(
        f'no checkpoint of stage {stage!r} in {path}: train it first with '
        f'`python run.py --mode=train --config=... --config.stages={stage} '
        f'--workdir={workdir}`')
  step, restored = found
  variables = {'params': restored['params']}
  if restored.get('batch_stats'):
    variables['batch_stats'] = restored['batch_stats']
  return {'variables': variables, 'norm': restored['norm'], 'step': int(step)}
