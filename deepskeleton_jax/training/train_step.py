"""The train step of every stage: one jitted, state-donating step under a global mesh.

Stacked hypotheses (leading axis H of every parameter) are applied together
(`hypotheses.map_hypotheses`) and their losses summed, so each hypothesis gets
exactly the gradient it would get alone, and its own rate (each keeps its own
plateau decay, `TrainState.lr_scale`); SGD with momentum and weight decay
(the paper's) or Adam; step, plateau or cosine decay; gradient accumulation
over micro-batches; non-finite updates are never applied (the loop's policy
then stops or skips). `train_loop.py` runs the step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from deepskeleton_jax.models import hypotheses
from deepskeleton_jax.experiment import parallel
from deepskeleton_jax.experiment import stages as stages_lib


@flax.struct.dataclass
class TrainState:
  """Everything a stage's training needs to resume, as one pytree."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  norm: dict[str, jax.Array]      # pose normalisation {'mean': [16,3], 'std': []}
  rng: jax.Array                  # raw uint32 PRNG key
  lr_scale: jax.Array             # [H] plateau decay multiplier of each hypothesis
  best_val: jax.Array             # [H] plateau: each hypothesis' best validation loss
  bad_evals: jax.Array            # [H] plateau: evaluations without improvement
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


# Folded into the ensemble's key: with both stages at train.seed 0, ensemble
# member b would otherwise start from regressor hypothesis b's key.
_ENSEMBLE_KEY = 0x656E73


def stage_keys(stage_name: str, seed: int) -> tuple[jax.Array, jax.Array]:
  """(initialisation key, training-state key) of a stage trained with `seed`.

  Hypothesis i is initialised from `jax.random.split(init key, H)[i]`
  (`init_variables`); the ensemble's key differs from every other stage's.
  """
  key = jax.random.PRNGKey(seed)
  if stage_name == 'ensemble':
    key = jax.random.fold_in(key, _ENSEMBLE_KEY)
  init_rng, state_rng = jax.random.split(key)
  return init_rng, state_rng


def init_variables(stage: stages_lib.Stage, rng: jax.Array) -> Any:
  """Stacked variables [H, ...] of a stage."""
  return hypotheses.init_stacked(stage.model, rng, stage.num_hyps,
                                 jnp.asarray(stage.dummy_input), train=False)


def create_state(variables: Any, tx: optax.GradientTransformation,
                 norm: dict[str, Any], rng: jax.Array) -> TrainState:
  """A fresh state: step 0, every hypothesis at the full rate, no best loss yet.

  Args:
    variables: stacked variables [H, ...] (`init_variables`).
    tx: the optimizer (`make_optimizer`).
    norm: the pose normalisation {'mean': [16, 3], 'std': []}.
    rng: the PRNG key of the training steps (dropout).

  Returns:
    The TrainState; the plateau fields have one entry per hypothesis.
  """
  params = variables['params']
  num = hypotheses.num_hypotheses(params)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
      norm={k: jnp.asarray(v, jnp.float32) for k, v in norm.items()}, rng=rng,
      lr_scale=jnp.ones((num,), jnp.float32), best_val=jnp.full((num,), jnp.inf, jnp.float32),
      bad_evals=jnp.zeros((num,), jnp.int32), nonfinite_steps=jnp.zeros((), jnp.int32),
      first_nonfinite=jnp.full((), -1, jnp.int32))


def _per_hyp_losses(stage, params, batch_stats, batch, aux, norm, rng, train, step=None):
  """Loss of each hypothesis [H], new batch stats and metrics."""
  inputs, targets = stage.make_inputs(batch, aux, norm, step)

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

  def loss_fn(params, batch_stats, batch, aux, norm, rng, step):
    losses, (new_bs, _) = _per_hyp_losses(stage, params, batch_stats, batch, aux,
                                          norm, rng, train=True, step=step)
    return losses.sum(), (losses, new_bs)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: dict[str, jax.Array], aux: Any):
    rng, step_rng = jax.random.split(state.rng)
    if accum == 1:
      (_, (losses, new_bs)), grads = grad_fn(state.params, state.batch_stats, batch,
                                             aux, state.norm, step_rng, state.step)
    else:
      micro = _split_micro(batch, accum)

      def body(carry, xs):
        grads_acc, losses_acc, bs = carry
        mb, r = xs
        (_, (l, bs)), g = grad_fn(state.params, bs, mb, aux, state.norm, r, state.step)
        grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, g)
        return (grads_acc, losses_acc + l, bs), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros((stage.num_hyps,), jnp.float32), state.batch_stats)
      (grads, losses, new_bs), _ = jax.lax.scan(
          body, init, (micro, jax.random.split(step_rng, accum)))
      grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
      losses = losses / accum

    lr = lr_fn(state.step) * state.lr_scale  # [H]: each hypothesis' own plateau decay
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = jax.tree_util.tree_map(
        lambda p, u: p - lr.reshape((-1,) + (1,) * (p.ndim - 1)) * u, state.params, updates)
    # One reduction over all gradients concatenated: a reduction per leaf made
    # XLA:CPU compile a small SkeletonMapNet's step in 180 s of CPU time
    # instead of 69 s (measured; the same step time).
    flat = jnp.concatenate([jnp.ravel(g).astype(jnp.float32)
                            for g in jax.tree_util.tree_leaves(grads)])
    finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(flat))
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
    metrics = {'loss': losses.mean(), 'learning_rate': lr.mean()}
    if stage.num_hyps > 1:
      metrics.update({f'loss_h{i}': losses[i] for i in range(stage.num_hyps)})
      metrics.update({f'learning_rate_h{i}': lr[i] for i in range(stage.num_hyps)})
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
  """Returns `fn(state, batch, aux) -> [H] loss of each hypothesis` in eval mode."""
  def fn(state: TrainState, batch, aux):
    losses, _ = _per_hyp_losses(stage, state.params, state.batch_stats, batch, aux,
                                state.norm, state.rng, train=False)
    return losses
  return fn
