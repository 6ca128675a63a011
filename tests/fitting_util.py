"""Test helper: a few Adam steps of a Flax model with BatchNorm on one fixed batch."""

from typing import Any, Callable

import jax
import optax


def adam_losses(model: Any, variables: Any, inputs: jax.Array,
                loss_fn: Callable[[Any], jax.Array], num_steps: int,
                learning_rate: float = 1e-2) -> list[float]:
  """Trains `model` in train mode on `inputs`; returns the loss of every step.

  Args:
    model: a Flax module whose variables have 'params' and 'batch_stats'.
    variables: its initial variables.
    inputs: the fixed batch passed to `model.apply`.
    loss_fn: model output -> scalar loss.
    num_steps: Adam steps.
    learning_rate: Adam's rate.

  Returns:
    The loss before each update.
  """
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def objective(p):
      out, updated = model.apply({'params': p, 'batch_stats': batch_stats}, inputs,
                                 train=True, mutable=['batch_stats'])
      return loss_fn(out), updated['batch_stats']
    (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  losses = []
  for _ in range(num_steps):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
    losses.append(float(loss))
  return losses
