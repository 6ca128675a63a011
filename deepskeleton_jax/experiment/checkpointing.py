"""Orbax checkpoints of a stage: train state plus each process's input position.

Layout: `<workdir>/<stage>/checkpoints/<step>/{state,data}`. `state` is the
TrainState (Orbax StandardSave); `data` holds one JSON file per process with
its input iterator's state, so a resumed run neither repeats nor skips
examples. Orbax writes each step to a temporary directory and renames it when
complete, so a process killed mid-save never leaves a step that looks
restorable but is not.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from deepskeleton_jax import errors
from deepskeleton_jax import files


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


# Config keys that change what a stage's trained parameters mean, and the value
# that checkpoints written before the key existed were trained with.
_TRAINED_WITH = {'hourglass': {'loss': 'mse'}}


def _stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), stage)


def _stage_config_path(workdir: str, stage: str) -> str:
  return os.path.join(_stage_dir(workdir, stage), 'trained_with.json')


def check_trained_with(config, workdir: str, stage: str) -> None:
  """Refuses a stage checkpoint trained under settings that `config` contradicts.

  Args:
    config: the experiment config.
    workdir: the experiment directory.
    stage: the stage name.

  Raises:
    errors.ConfigError: e.g. an hourglass trained with `loss='mse'` loaded with
      `hourglass.loss='integral'` (same parameters, different decoding).
  """
  keys = _TRAINED_WITH.get(stage)
  if not keys:
    return
  path = _stage_config_path(workdir, stage)
  recorded = json.loads(epath.Path(path).read_text()) if os.path.exists(path) else {}
  for key, legacy in keys.items():
    trained, wanted = recorded.get(key, legacy), config[stage][key]
    if trained != wanted:
      raise errors.ConfigError(
          f'config.{stage}.{key}={wanted!r}, but the {stage} checkpoints in '
          f'{os.path.dirname(path)} were trained with {key}={trained!r}: pass '
          f'--config.{stage}.{key}={trained} (or train the stage in another workdir)')


def record_trained_with(config, workdir: str, stage: str) -> None:
  """Writes the settings `check_trained_with` compares (process 0; atomic)."""
  keys = _TRAINED_WITH.get(stage)
  if not keys or jax.process_index() != 0:
    return
  path = _stage_config_path(workdir, stage)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_text(path, json.dumps({k: config[stage][k] for k in keys}))


def checkpoint_dir(workdir: str, stage: str) -> str:
  return os.path.join(_stage_dir(workdir, stage), 'checkpoints')


def manager(workdir: str, stage: str, keep: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager for a stage's state and input position."""
  return ocp.CheckpointManager(
      checkpoint_dir(workdir, stage),
      item_names=('state', 'data'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, iterator: Any,
         wait: bool = True) -> None:
  """Saves the state and the iterator position at `step`."""
  args = {'state': ocp.args.StandardSave(state)}
  if iterator is not None:
    args['data'] = DataIteratorSave(iterator)
  mngr.save(step, args=ocp.args.Composite(**args), force=True)
  if wait:
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
            iterator: Any) -> Any:
  """Restores the state (to `abstract_state`'s structure/sharding) and iterator."""
  args = {'state': ocp.args.StandardRestore(abstract_state)}
  if iterator is not None:
    args['data'] = DataIteratorRestore(iterator)
  return mngr.restore(step, args=ocp.args.Composite(**args))['state']


def load_variables(workdir: str, stage: str) -> dict[str, Any]:
  """Loads a trained stage's variables for inference (no optimizer state).

  Args:
    workdir: the experiment's work directory.
    stage: the stage name.

  Returns:
    {'variables': {'params', 'batch_stats'} stacked over hypotheses,
     'norm': pose normalisation, 'step': int}.

  Raises:
    errors.CheckpointNotFoundError: naming the expected checkpoint directory.
  """
  path = checkpoint_dir(workdir, stage)
  mngr = ocp.CheckpointManager(path, item_names=('state', 'data'),
                               item_handlers={'state': ocp.StandardCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(create=False)) \
      if os.path.isdir(path) else None
  step = mngr.latest_step() if mngr is not None else None
  if step is None:
    raise errors.CheckpointNotFoundError(
        f'no checkpoint of stage {stage!r} in {path}: train it first with '
        f'`python run.py --mode=train --config=... --config.stages={stage} '
        f'--workdir={workdir}`')
  # Replicated over this run's devices: the saved shardings may name devices
  # that do not exist here (e.g. trained by 2 processes, evaluated by 1).
  replicated = NamedSharding(Mesh(np.array(jax.devices()), ('d',)), P())
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
      mngr.item_metadata(step)['state'])
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))['state']
  variables = {'params': restored['params']}
  if restored.get('batch_stats'):
    variables['batch_stats'] = restored['batch_stats']
  return {'variables': variables, 'norm': restored['norm'], 'step': int(step)}
