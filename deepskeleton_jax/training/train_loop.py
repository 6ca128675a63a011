"""Training of one stage: one jitted, state-donating step under a global mesh.

Every stage trains the same way: stacked hypotheses (leading axis H of every
parameter) are applied with `jax.vmap` and their losses summed, so each
hypothesis gets exactly the gradient it would get alone; SGD with momentum and
weight decay (the paper's) or Adam; step, plateau or cosine decay; gradient
accumulation; non-finite updates are never applied (policy: stop or skip).
Orbax checkpoints every N steps, at the end and on SIGTERM; rerunning the same
command resumes from the latest step with the input pipeline where it was.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deepskeleton_jax.training import checkpointing
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.training import metric_writer
from deepskeleton_jax.training import parallel
from deepskeleton_jax.training import stages as stages_lib
from deepskeleton_jax.models import hypotheses


@flax.struct.dataclass
class TrainState:
  """Everything a stage's training needs to resume, as one pytree."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  norm: dict[str, jax.Array]      # pose normalisation {'mean': [16,3], 'std': []}
  rng: jax.Array                  # raw uint32 PRNG key
  lr_scale: jax.Array             # plateau decay multiplier
  best_val: jax.Array             # plateau: best validation loss so far
  bad_evals: jax.Array            # plateau: evaluations without improvement
  nonfinite_steps: jax.Array      # updates skipped because non-finite
  first_nonfinite: jax.Array      # step of the first non-finite update, or -1


# ----------------------------------------------------------------------------
# Optimiser and learning rate.


def learning_rate_fn(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """The base schedule (the plateau multiplier is applied on top)."""
  lr = train_cfg.learning_rate
  if train_cfg.schedule == 'step':
    base = optax.piecewise_constant_schedule(
        lr, {int(s): train_cfg.decay_factor for s in train_cfg.decay_steps})
  elif train_cfg.schedule == 'cosine':
    base = optax.cosine_decay_schedule(lr, max(1, train_cfg.num_steps - train_cfg.warmup_steps))
  else:  # 'constant' and 'plateau'
    base = optax.constant_schedule(lr)
  if train_cfg.warmup_steps:
    warm = optax.linear_schedule(0.0, lr, train_cfg.warmup_steps)
    return optax.join_schedules([warm, base], [train_cfg.warmup_steps])
  return base


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Direction of the update before scaling by -learning_rate.

  Weight decay applies to kernels only (leaves with more than 2 dimensions:
  every leaf carries the hypothesis axis).
  """
  parts = []
  if train_cfg.weight_decay:
    mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 2, p)
    parts.append(optax.add_decayed_weights(train_cfg.weight_decay, mask=mask))
  if train_cfg.optimizer == 'sgd':
    parts.append(optax.trace(decay=train_cfg.momentum))
  else:
    parts.append(optax.scale_by_adam())
  return optax.chain(*parts)


# ----------------------------------------------------------------------------
# State and steps.


def init_variables(stage: stages_lib.Stage, rng: jax.Array) -> Any:
  """Stacked variables [H, ...] of a stage."""
  return hypotheses.init_stacked(stage.model, rng, stage.num_hyps,
                                 jnp.asarray(stage.dummy_input), train=False)


def create_state(variables: Any, tx: optax.GradientTransformation,
                 norm: dict[str, Any], rng: jax.Array) -> TrainState:
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
      norm={k: jnp.asarray(v, jnp.float32) for k, v in norm.items()}, rng=rng,
      lr_scale=jnp.ones((), jnp.float32), best_val=jnp.full((), jnp.inf, jnp.float32),
      bad_evals=jnp.zeros((), jnp.int32), nonfinite_steps=jnp.zeros((), jnp.int32),
      first_nonfinite=jnp.full((), -1, jnp.int32))


def _per_hyp_losses(stage, params, batch_stats, batch, aux, norm, rng, train):
  """Loss of each hypothesis [H], new batch stats and metrics."""
  inputs, targets = stage.make_inputs(batch, aux, norm)

  def one(p, bs, x, t, r):
    variables = {'params': p, 'batch_stats': bs}
    if train:
      out, updates = stage.model.apply(variables, x, train=True,
                                       mutable=['batch_stats'], rngs={'dropout': r})
      bs = updates.get('batch_stats', bs)
    else:
      out = stage.model.apply(variables, x, train=False)
    loss, metrics = stage.loss(out, t, batch)
    return loss, (bs, metrics)

  rngs = jax.random.split(rng, stage.num_hyps)
  return hypotheses.map_hypotheses(one, params, batch_stats, inputs, targets, rngs,
                                   method=stage.hyp_map)


def _split_micro(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...], micro-batch j taking rows j, j+k, ... (local to devices)."""
  def split(x):
    return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree_util.tree_map(split, batch)


def make_train_step(stage: stages_lib.Stage, train_cfg: ml_collections.ConfigDict):
  """Returns `step(state, batch, aux) -> (state, metrics)` (to be jitted)."""
  tx = make_optimizer(train_cfg)
  lr_fn = learning_rate_fn(train_cfg)
  accum = int(train_cfg.grad_accum)

  def loss_fn(params, batch_stats, batch, aux, norm, rng):
    losses, (new_bs, _) = _per_hyp_losses(stage, params, batch_stats, batch, aux,
                                          norm, rng, train=True)
    return losses.sum(), (losses, new_bs)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: dict[str, jax.Array], aux: Any):
    rng, step_rng = jax.random.split(state.rng)
    if accum == 1:
      (_, (losses, new_bs)), grads = grad_fn(state.params, state.batch_stats, batch,
                                             aux, state.norm, step_rng)
    else:
      micro = _split_micro(batch, accum)

      def body(carry, xs):
        grads_acc, losses_acc, bs = carry
        mb, r = xs
        (_, (l, bs)), g = grad_fn(state.params, bs, mb, aux, state.norm, r)
        grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, g)
        return (grads_acc, losses_acc + l, bs), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros((stage.num_hyps,), jnp.float32), state.batch_stats)
      (grads, losses, new_bs), _ = jax.lax.scan(
          body, init, (micro, jax.random.split(step_rng, accum)))
      grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
      losses = losses / accum

    lr = lr_fn(state.step) * state.lr_scale
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.params, updates)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        batch_stats=keep(new_bs, state.batch_stats),
        opt_state=keep(new_opt, state.opt_state),
        rng=rng,
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
        first_nonfinite=jnp.where((~finite) & (state.first_nonfinite < 0),
                                  state.step, state.first_nonfinite))
    metrics = {'loss': losses.mean(), 'learning_rate': lr}
    if stage.num_hyps > 1:
      metrics.update({f'loss_h{i}': losses[i] for i in range(stage.num_hyps)})
    return new_state, metrics

  return step


def jit_train_step(stage: stages_lib.Stage, train_cfg: ml_collections.ConfigDict,
                   mesh, state_sharding: Any):
  """The train step jitted over `mesh`: batch on `data`, state donated."""
  return jax.jit(make_train_step(stage, train_cfg),
                 in_shardings=(state_sharding, parallel.batch_sharding(mesh),
                               parallel.replicated(mesh)),
                 out_shardings=(state_sharding, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def make_eval_loss(stage: stages_lib.Stage):
  """Returns `fn(state, batch, aux) -> mean loss over hypotheses` in eval mode."""
  def fn(state: TrainState, batch, aux):
    losses, _ = _per_hyp_losses(stage, state.params, state.batch_stats, batch, aux,
                                state.norm, state.rng, train=False)
    return losses.mean()
  return fn


# ----------------------------------------------------------------------------
# Data helpers.


def pose_norm(config: ml_collections.ConfigDict, max_examples: int = 4096) -> dict[str, np.ndarray]:
  """Mean root-relative pose [16, 3] and a scalar std (mm) of the train split.

  Every process reads the same first examples, so all agree.
  """
  it = input_pipeline.make_iterator(
      config.data, config.data.train_split, 256, shuffle=False, num_epochs=1,
      seed=0, process_index=0, process_count=1, drop_remainder=False)
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


class Preempted(Exception):
  """Raised after SIGTERM once the checkpoint is saved (run.py exits with 0)."""


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
  """Fills every hypothesis' backbone from a user-supplied ResNet-50 file."""
  from deepskeleton_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  first = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), variables)
  state_dict = pretrained.load_state_dict(config_model.pretrained)
  converted, report = pretrained.convert_resnet50(state_dict, first, in_channels)
  logging.info('pretrained %s: %s', config_model.pretrained, report)
  num = jax.tree_util.tree_leaves(variables)[0].shape[0]
  return jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x)[None], (num,) + np.shape(x)), converted)


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
    Preempted: after SIGTERM, once a checkpoint of the current step is saved.
  """
  # SIGTERM during set-up or compilation is honoured after the first step.
  with _Preemption() as preempt:
    return _train_stage(config, workdir, stage_name, preempt)


def _train_stage(config, workdir, stage_name, preempt):
  """`train_stage` with the SIGTERM flag already installed."""
  stage = stages_lib.build(config, stage_name)
  tcfg = config[stage_name].train
  mesh = parallel.make_mesh(config.parallel.hyp_axis)
  parallel.local_batch_size(tcfg.batch_size, mesh)
  stage_dir = f'{workdir}/{stage_name}'
  aux = None
  if stage.needs:
    aux = checkpointing.load_variables(workdir, stage.needs)['variables']
    aux = jax.device_put(aux, parallel.replicated(mesh))

  iterator = input_pipeline.make_iterator(
      config.data, config.data.train_split, tcfg.batch_size, shuffle=True,
      num_epochs=None, seed=tcfg.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), drop_remainder=True)

  rng = jax.random.PRNGKey(tcfg.seed)
  init_rng, state_rng = jax.random.split(rng)
  abstract_vars = jax.eval_shape(lambda r: init_variables(stage, r), init_rng)
  tx = make_optimizer(tcfg)
  norm_shape = {'mean': np.zeros((16, 3), np.float32), 'std': np.ones((), np.float32)}
  abstract_state = jax.eval_shape(lambda v, r: create_state(v, tx, norm_shape, r),
                                  abstract_vars, state_rng)
  state_sharding = parallel.stacked_sharding(mesh, abstract_state, stage.num_hyps)

  mngr = checkpointing.manager(workdir, stage_name, tcfg.keep_checkpoints)
  latest = mngr.latest_step()
  if latest is not None:
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding)
    state = checkpointing.restore(mngr, latest, target, iterator)
    logging.info('%s: resumed from step %d (%s)', stage_name, latest, mngr.directory)
  else:
    norm = pose_norm(config) if stage.pose_norm else norm_shape
    variables = jax.jit(lambda r: init_variables(stage, r))(init_rng)
    model_cfg = config[stage_name].model
    if model_cfg.get('pretrained'):
      variables = load_pretrained(model_cfg, variables, stage.dummy_input.shape[-1])
    state = jax.jit(lambda v, r: create_state(v, tx, norm, r),
                    out_shardings=state_sharding)(variables, state_rng)

  step_fn = jit_train_step(stage, tcfg, mesh, state_sharding)
  writer = metric_writer.MetricWriter(stage_dir)
  start = int(state.step)
  num_steps = int(tcfg.num_steps)
  last: dict[str, float] = {}
  if start >= num_steps:
    logging.info('%s: already trained to step %d', stage_name, start)
    return last
  logging.info('%s: training %d hypotheses from step %d to %d, global batch %d on %d devices',
               stage_name, stage.num_hyps, start, num_steps, tcfg.batch_size,
               jax.device_count())
  eval_loss = None
  t0, s0 = time.time(), start
  for step in range(start, num_steps):
    batch = parallel.global_batch(next(iterator), mesh)
    if step == start:
      step_fn = parallel.compile_together(step_fn, f'{stage_name} train step', state, batch, aux)
    state, metrics = step_fn(state, batch, aux)
    done = step + 1
    if step == start:  # Rates and ETA exclude compilation.
      jax.block_until_ready(metrics)
      t0, s0 = time.time(), done
    logged = done % tcfg.log_every == 0 or done == num_steps
    if logged:
      last = _log(stage_name, state, metrics, tcfg, done, num_steps, t0, s0, writer)
    if tcfg.schedule == 'plateau' and done % tcfg.plateau_every == 0:
      if eval_loss is None:  # Eval batches have the train batches' shapes.
        eval_loss = parallel.compile_together(jax.jit(make_eval_loss(stage)),
                                              f'{stage_name} eval loss', state, batch, aux)
      state = _plateau(config, stage, state, eval_loss, aux, mesh, tcfg, writer, done)
    saved = done % tcfg.checkpoint_every == 0 or done == num_steps
    if saved:
      _check_finite(state, tcfg)
      checkpointing.save(mngr, done, state, iterator)
    if preempt.any_process(sync=logged or saved):
      if not saved:  # Orbax refuses to save a step twice.
        _check_finite(state, tcfg)
        checkpointing.save(mngr, done, state, iterator)
      writer.close()
      mngr.close()
      raise Preempted(f'{stage_name}: stopped at step {done} after SIGTERM with a '
                      'checkpoint saved; rerun the same command to resume')
  writer.close()
  mngr.close()
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


def _check_finite(state: TrainState, tcfg) -> None:
  bad = int(state.nonfinite_steps)
  if bad and tcfg.nonfinite == 'stop':
    raise FloatingPointError(
        f'non-finite loss or gradient at step {int(state.first_nonfinite) + 1}; the '
        'update was not applied and nothing from it was saved (set '
        "train.nonfinite='skip' to skip such updates instead)")
  if bad:
    logging.warning('%d non-finite updates skipped so far (first at step %d)', bad,
                    int(state.first_nonfinite) + 1)


def _plateau(config, stage, state, eval_loss, aux, mesh, tcfg, writer, done):
  """Validation loss on a few eval batches; decays the rate after `patience` misses."""
  it = input_pipeline.make_iterator(
      config.data, config.data.eval_split, tcfg.batch_size, shuffle=False,
      num_epochs=1, seed=0, process_index=jax.process_index(),
      process_count=jax.process_count(), drop_remainder=True)
  losses = []
  for i, batch in enumerate(it):
    if i == 4:
      break
    losses.append(float(eval_loss(state, parallel.global_batch(batch, mesh), aux)))
  if not losses:
    return state
  val = float(np.mean(losses))
  best, bad, scale = float(state.best_val), int(state.bad_evals), float(state.lr_scale)
  if val < best - 1e-6:
    best, bad = val, 0
  else:
    bad += 1
    if bad >= tcfg.plateau_patience:
      scale *= tcfg.decay_factor
      bad = 0
      logging.info('validation loss plateaued at %.4f: learning rate x%g', val, scale)
  writer.write(done, {'val_loss': val, 'lr_scale': scale})
  rep = parallel.replicated(mesh)
  return state.replace(best_val=jax.device_put(np.float32(best), rep),
                       bad_evals=jax.device_put(np.int32(bad), rep),
                       lr_scale=jax.device_put(np.float32(scale), rep))
