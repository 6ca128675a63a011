"""The training loop of one stage (the step itself is in `train_step.py`).

Non-finite updates are never applied (policy: stop or skip); the plateau
schedule decays the rate when the loss on a fixed subset of the validation
split (`data.val_split`, never the test split) stops improving. Orbax
checkpoints every N steps, at the end and on SIGTERM; rerunning the same
command resumes from the newest step that reads completely (a damaged newer
step is logged and removed), with the input pipeline where it was and
`metrics.jsonl` cut back to that step.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from deepskeleton_jax import errors
from deepskeleton_jax.data import registry
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.data import streams
from deepskeleton_jax.experiment import metric_writer
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib
from deepskeleton_jax.training import train_step


# ----------------------------------------------------------------------------
# Data helpers.


def pose_norm(config: ml_collections.ConfigDict, max_examples: int = 4096) -> dict[str, np.ndarray]:
  """Mean root-relative pose [16, 3] and a scalar std (mm) of the train split.

  Over a fixed random subset of `max_examples` training examples (the split's
  first examples would be one subject's first actions), the same on every
  process, so all agree. The mean is also the evaluation's 'Mean pose' row.
  """
  it = input_pipeline.make_iterator(
      config.data, config.data.train_split, 256, shuffle=True, num_epochs=1,
      seed=0, process_index=0, process_count=1, drop_remainder=False, augment=False)
  poses = []
  count = 0
  for batch in it:
    keep = batch['has_3d'] & batch['mask']
    poses.append(np.asarray(stages_lib.root_relative(batch['joints_3d'][keep])))
    count += int(keep.sum())
    if count >= max_examples:
      break
  poses = np.concatenate(poses)[:max_examples] if poses else np.zeros((0, 16, 3))
  if len(poses) == 0:
    logging.warning('no 3D poses in the train split: pose normalisation is the identity')
    return {'mean': np.zeros((16, 3), np.float32), 'std': np.ones((), np.float32)}
  mean = poses.mean(0)
  std = np.sqrt(np.mean((poses - mean) ** 2))
  return {'mean': mean.astype(np.float32), 'std': np.float32(max(std, 1e-3))}


def train_iterator(config: ml_collections.ConfigDict, stage_name: str,
                   shard: tuple[int, int]) -> Any:
  """The endless, shuffled training stream of a stage.

  The regressors' steps on maps rendered from labels read
  `config.regressor.gt_split` when it is set (e.g. the synthetic set's
  image-free 'poses' split): all steps with `regressor.input='gt'`, the first
  `regressor.gt_steps` with 'predicted' (then `data.train_split`, whose images
  the SkeletonMapNet sees). The ensemble's members each read their own
  stream (shuffle seed `streams.stream_seed(train.seed, member)`), stacked
  along axis 1 of every field.

  Args:
    config: the experiment config.
    stage_name: the stage.
    shard: (input shard, number of shards) of this process (`parallel.data_shard`).

  Returns:
    An iterator of this process's batches with `get_state` / `set_state`.
  """
  tcfg = config[stage_name].train

  def stream(split, seed):
    return input_pipeline.make_iterator(
        config.data, split, tcfg.batch_size, shuffle=True, num_epochs=None,
        seed=seed, process_index=shard[0], process_count=shard[1], drop_remainder=True)

  reg = config.regressor
  gt_split = reg.gt_split if stage_name in ('regressor', 'ensemble') else ''

  def member(seed):
    if gt_split and reg.input == 'gt':
      return stream(gt_split, seed)
    if gt_split and reg.gt_steps:
      return input_pipeline.ChainedIterator(stream(gt_split, seed), reg.gt_steps,
                                            stream(config.data.train_split, seed))
    return stream(config.data.train_split, seed)

  if stage_name == 'ensemble':
    return streams.StackedStreams([member(streams.stream_seed(tcfg.seed, m))
                                   for m in range(config.ensemble.num_runs)])
  return member(tcfg.seed)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def any_process(self, sync: bool) -> bool:
    """Whether any process got SIGTERM.

    Args:
      sync: gather the flags of all processes now. The gather blocks the host
        until the step is done, so the loop asks only at steps that wait for
        the device anyway (logged or saved ones); with one process the flag
        is local and always read.

    Returns:
      True if this process (or, when `sync`, any process) got SIGTERM.
    """
    if jax.process_count() == 1:
      return self.requested
    if not sync:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


def load_pretrained(config_model: ml_collections.ConfigDict, variables: Any,
                    in_channels: int) -> Any:
  """Fills every hypothesis' backbone from a user-supplied ResNet-50 file.

  Only the variables the file holds change (the same values in every
  hypothesis); every other layer (decoder, heads, the regression layer) keeps
  its own hypothesis' initialisation.
  """
  from deepskeleton_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  state_dict = pretrained.load_state_dict(config_model.pretrained)
  converted, report = pretrained.convert_resnet50(state_dict, variables, in_channels)
  logging.info('pretrained %s: %s', config_model.pretrained, report)
  return converted


# ----------------------------------------------------------------------------
# The loop.


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage_name: str) -> dict[str, float]:
  """Trains (or resumes) one stage to `num_steps`.

  Args:
    config: finalised experiment config.
    workdir: experiment directory; the stage writes to `<workdir>/<stage>/`.
    stage_name: one of config_lib.STAGES.

  Returns:
    The last logged metrics.

  Raises:
    FloatingPointError: with `nonfinite='stop'`, naming the first bad step.
    parallel.Preempted: after SIGTERM, once a checkpoint of the current step is saved.
  """
  # SIGTERM during set-up or compilation is honoured after the first step.
  with _Preemption() as preempt:
    return _train_stage(config, workdir, stage_name, preempt)


def _train_stage(config, workdir, stage_name, preempt):
  """`train_stage` with the SIGTERM flag already installed."""
  check_against_checkpoints(config, workdir, (stage_name,))
  stage = stages_lib.build(config, stage_name)
  tcfg = config[stage_name].train
  if stage_name == 'skeleton_net':
    check_depth(config)
  mesh = parallel.stage_mesh(config.parallel.hyp_axis, stage.num_hyps, stage_name)
  parallel.local_batch_size(tcfg.batch_size, mesh)
  aux = None
  if stage.needs:
    aux = checkpointing.load_variables(workdir, stage.needs)['variables']
    aux = jax.device_put(aux, parallel.replicated(mesh))
  iterator = train_iterator(config, stage_name, parallel.data_shard(mesh))
  mngr = checkpointing.manager(workdir, stage_name, tcfg.keep_checkpoints)
  state, state_sharding = _initial_state(config, stage, mesh, mngr, iterator)
  # After the restore: a workdir from before the record gets it only once its
  # checkpoint is known to fit the config.
  checkpointing.record_trained_with(config, workdir, stage_name)
  writer = metric_writer.MetricWriter(f'{workdir}/{stage_name}', start_step=int(state.step))
  try:
    return _loop(config, stage, state, state_sharding, aux, mesh, iterator, mngr, writer,
                 preempt)
  finally:
    writer.close()
    mngr.close()


def check_against_checkpoints(config: ml_collections.ConfigDict, workdir: str,
                              stage_names: tuple[str, ...]) -> None:
  """Refuses a config that contradicts the checkpoints the stages resume or use.

  Args:
    config: the experiment config.
    workdir: the experiment directory.
    stage_names: the stages to train (the stages they need are checked too).

  Raises:
    errors.ConfigError: naming the key, the checkpoint's value and the config's.
  """
  for name in stage_names:
    checkpointing.check_trained_with(config, workdir, name)
    needs = stages_lib.build(config, name).needs
    if needs:
      checkpointing.check_trained_with(config, workdir, needs)


def check_depth(config: ml_collections.ConfigDict, sample: int = 512) -> None:
  """Fails unless the training examples have depth (the maps' occlusion order).

  The SkeletonMapNet's targets draw the nearer bone in the foreground map and
  the farther in the background map; without 3D joints every depth is 0 and
  fg equals bg, so the network would silently learn no occlusion.

  Args:
    config: the experiment config.
    sample: how many training examples (a fixed random sample) to look at.

  Raises:
    errors.ConfigError: some sampled examples have no 3D joints.
  """
  source = registry.data_source(config.data, config.data.train_split, decode_image=False)
  n = len(source)
  idx = np.random.default_rng(0).permutation(n)[:sample]
  missing = sum(not bool(source[int(i)]['has_3d']) for i in idx)
  if missing:
    raise errors.ConfigError(
        f'data.name={config.data.name!r}: {missing} of {len(idx)} sampled training '
        'examples have no 3D joints (has_3d false), so their skeleton-map targets '
        'would have no occlusion order (fg = bg). Give the dataset depth: for MPII, '
        'lift pseudo-3D labels (--mode=pseudo3d) and rebuild with '
        '--config.data.builder_kwargs.pseudo_3d_file=PATH')


def _initial_state(config, stage, mesh, mngr, iterator):
  """The latest checkpoint (with the iterator's position), or a fresh state."""
  tcfg = config[stage.name].train
  init_rng, state_rng = train_step.stage_keys(stage.name, tcfg.seed)
  tx = train_step.make_optimizer(tcfg)
  norm_shape = {'mean': np.zeros((16, 3), np.float32), 'std': np.ones((), np.float32)}
  abstract_vars = jax.eval_shape(lambda r: train_step.init_variables(stage, r), init_rng)
  abstract_state = jax.eval_shape(lambda v, r: train_step.create_state(v, tx, norm_shape, r),
                                  abstract_vars, state_rng)
  state_sharding = parallel.state_sharding(mesh, abstract_state)
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)
  restored = checkpointing.restore(mngr, stage.name, target, iterator)
  if restored is not None:
    step, state = restored
    logging.info('%s: resumed from step %d (%s)', stage.name, step, mngr.directory)
    return state, state_sharding
  norm = pose_norm(config) if stage.pose_norm else norm_shape
  # Not under an outer jit: init_stacked compiles one hypothesis' init once.
  variables = train_step.init_variables(stage, init_rng)
  model_cfg = config[stage.name].model
  if model_cfg.get('pretrained'):
    variables = load_pretrained(model_cfg, variables, stage.dummy_input.shape[-1])
  state = jax.jit(lambda v, r: train_step.create_state(v, tx, norm, r),
                  out_shardings=state_sharding)(variables, state_rng)
  return state, state_sharding


def _loop(config, stage, state, state_sharding, aux, mesh, iterator, mngr, writer, preempt):
  """Steps from the state's step to `num_steps`; returns the last logged metrics."""
  tcfg = config[stage.name].train
  start, num_steps = int(state.step), int(tcfg.num_steps)
  last: dict[str, float] = {}
  if start >= num_steps:
    logging.info('%s: already trained to step %d', stage.name, start)
    return last
  logging.info('%s: training %d hypotheses from step %d to %d, global batch %d on %d devices',
               stage.name, stage.num_hyps, start, num_steps, tcfg.batch_size,
               jax.device_count())
  step_fn = train_step.jit_train_step(stage, tcfg, mesh, state_sharding)
  plateau = _Plateau(config, stage, mesh, writer) if tcfg.schedule == 'plateau' else None
  t0, s0 = time.time(), start
  for step in range(start, num_steps):
    batch = parallel.global_batch(next(iterator), mesh)
    if step == start:
      step_fn = parallel.compile_together(step_fn, f'{stage.name} train step', state, batch, aux)
    state, metrics = step_fn(state, batch, aux)
    done = step + 1
    if step == start:  # Rates and ETA exclude compilation.
      jax.block_until_ready(metrics)
      t0, s0 = time.time(), done
    logged = done % tcfg.log_every == 0 or done == num_steps
    if logged:
      last = _log(stage.name, state, metrics, tcfg, done, num_steps, t0, s0, writer)
    if plateau is not None and done % tcfg.plateau_every == 0:
      state = plateau(state, batch, aux, done)
    saved = done % tcfg.checkpoint_every == 0 or done == num_steps
    if saved:
      _check_finite(state, tcfg)
      checkpointing.save(mngr, done, state, iterator)
    if preempt.any_process(sync=logged or saved):
      if not saved:  # Orbax refuses to save a step twice.
        _check_finite(state, tcfg)
        checkpointing.save(mngr, done, state, iterator)
      raise parallel.Preempted(f'{stage.name}: stopped at step {done} after SIGTERM with a '
                      'checkpoint saved; rerun the same command to resume')
  return last


def _log(stage_name, state, metrics, tcfg, done, num_steps, t0, s0, writer):
  metrics = jax.device_get(metrics)
  _check_finite(state, tcfg)
  elapsed = time.time() - t0
  steps_per_s = (done - s0) / elapsed if done > s0 and elapsed > 0 else float('nan')
  scalars = {**metrics, 'steps_per_s': steps_per_s,
             'images_per_s': steps_per_s * tcfg.batch_size,
             'nonfinite_steps': int(state.nonfinite_steps)}
  writer.write(done, scalars)
  eta = ('?' if not steps_per_s > 0 else
         metric_writer.format_eta((num_steps - done) / steps_per_s))
  logging.info('%s step %d/%d  loss %.4f  lr %.3g  %.2f steps/s  %.1f img/s  ETA %s',
               stage_name, done, num_steps, float(metrics['loss']),
               float(metrics['learning_rate']), steps_per_s,
               steps_per_s * tcfg.batch_size, eta)
  return {k: float(v) for k, v in scalars.items()}


def _check_finite(state: train_step.TrainState, tcfg) -> None:
  bad = int(state.nonfinite_steps)
  if bad and tcfg.nonfinite == 'stop':
    raise FloatingPointError(
        f'non-finite loss or gradient at step {int(state.first_nonfinite) + 1}; the '
        'update was not applied and nothing from it was saved (set '
        "train.nonfinite='skip' to skip such updates instead)")
  if bad:
    logging.warning('%d non-finite updates skipped so far (first at step %d)', bad,
                    int(state.first_nonfinite) + 1)


def plateau_update(val: np.ndarray, best: np.ndarray, bad: np.ndarray, scale: np.ndarray,
                   patience: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One plateau decision per hypothesis, each on its own validation loss.

  Args:
    val: [H] this evaluation's validation loss of each hypothesis.
    best: [H] each hypothesis' best validation loss so far.
    bad: [H] evaluations without improvement since each hypothesis' last best.
    scale: [H] each hypothesis' rate multiplier.
    patience: evaluations without improvement before a decay.
    factor: the decay factor.

  Returns:
    The new (best, bad, scale): a hypothesis that improved resets its count, one
    that did not counts up and, at `patience`, multiplies its own rate by `factor`.
  """
  val, best = np.asarray(val, np.float32), np.asarray(best, np.float32)
  improved = val < best - 1e-6
  bad = np.where(improved, 0, np.asarray(bad, np.int32) + 1)
  decay = bad >= patience
  return (np.where(improved, val, best).astype(np.float32),
          np.where(decay, 0, bad).astype(np.int32),
          (np.asarray(scale, np.float32) * np.where(decay, factor, 1.0)).astype(np.float32))


class _Plateau:
  """Decays each hypothesis' rate when its validation loss stops improving (the paper's schedule).

  The loss is taken on a fixed random subset of `data.val_split` (a held-out
  part of the training data; never the test split) of
  `train.plateau_examples` examples, the same subset at every evaluation,
  in eval mode; after `train.plateau_patience` evaluations without a new best
  of its own, a hypothesis' rate is multiplied by `train.decay_factor`: the
  paper's networks are independent, so each stacked hypothesis keeps its own
  decay state (`plateau_update`).
  """

  def __init__(self, config, stage, mesh, writer):
    self._config, self._stage, self._mesh, self._writer = config, stage, mesh, writer
    self._tcfg = config[stage.name].train
    self._loss = None
    if not config.data.val_split:
      raise errors.ConfigError(
          f"{stage.name}.train.schedule='plateau' needs a validation split: set "
          'data.val_split (a held-out part of the training data)')

  def _batches(self):
    tcfg = self._tcfg
    shard, num_shards = parallel.data_shard(self._mesh)
    it = input_pipeline.make_iterator(
        self._config.data, self._config.data.val_split, tcfg.batch_size, shuffle=True,
        num_epochs=1, seed=0, process_index=shard, process_count=num_shards,
        drop_remainder=True, augment=False)
    for i, batch in enumerate(it):
      if i * tcfg.batch_size >= tcfg.plateau_examples:
        return
      batch = stages_lib.tile_streams(parallel.numeric_fields(batch), self._stage.data_streams)
      yield parallel.global_batch(batch, self._mesh)

  def __call__(self, state, train_batch, aux, done):
    if self._loss is None:  # Validation batches have the train batches' shapes.
      self._loss = parallel.compile_together(
          jax.jit(train_step.make_eval_loss(self._stage)), f'{self._stage.name} eval loss',
          state, train_batch, aux)
    losses = [np.asarray(self._loss(state, batch, aux)) for batch in self._batches()]
    if not losses:
      return state
    val = np.mean(losses, axis=0)  # [H]
    old_scale = np.asarray(state.lr_scale)
    best, bad, scale = plateau_update(val, np.asarray(state.best_val), np.asarray(state.bad_evals),
                                      old_scale, self._tcfg.plateau_patience,
                                      self._tcfg.decay_factor)
    for h in np.flatnonzero(scale != old_scale):
      logging.info('%s hypothesis %d: validation loss plateaued at %.4f: learning rate x%g',
                   self._stage.name, h, val[h], scale[h])
    scalars = {'val_loss': float(val.mean()), 'lr_scale': float(scale.mean())}
    if len(val) > 1:
      scalars.update({f'val_loss_h{h}': float(v) for h, v in enumerate(val)})
      scalars.update({f'lr_scale_h{h}': float(s) for h, s in enumerate(scale)})
    self._writer.write(done, scalars)
    rep = parallel.replicated(self._mesh)
    return state.replace(best_val=jax.device_put(best, rep), bad_evals=jax.device_put(bad, rep),
                         lr_scale=jax.device_put(scale, rep))
