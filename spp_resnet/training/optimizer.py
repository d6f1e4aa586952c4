"""The optimizer and learning-rate schedule built from `config.optimizer`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int) -> optax.Schedule:
  total = max(1, steps_per_epoch * num_epochs)
  warmup = int(round(opt.warmup_epochs * steps_per_epoch))
  base = opt.learning_rate
  if opt.schedule == 'constant':
    main = optax.constant_schedule(base)
  elif opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, max(1, total - warmup))
  elif opt.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        base, {int(e * steps_per_epoch) - warmup: opt.step_factor
               for e in opt.step_boundaries_epochs})
  elif opt.schedule == 'inverse_time':
    # Keras' legacy `SGD(decay=d)`: lr / (1 + d * iterations), d = opt.lr_decay.
    main = lambda step: base / (1.0 + opt.lr_decay * step)
  else:
    raise ValueError(f'config.optimizer.schedule: unknown {opt.schedule!r}')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])
  return main


def _decay_mask(params):
  """Weight decay on kernels only: not on biases or BatchNorm scale/shift."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(opt: ml_collections.ConfigDict, steps_per_epoch: int,
                     num_epochs: int) -> optax.GradientTransformation:
  chain = []
  if opt.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  decay = optax.add_decayed_weights(opt.weight_decay, mask=_decay_mask)
  if opt.weight_decay and opt.weight_decay_type == 'coupled':
    # L2 penalty folded into the gradient before momentum, as torch.optim.SGD's
    # weight_decay and a Keras L2 kernel regularizer (up to a factor 2) do.
    chain.append(decay)
  if opt.name == 'sgd':
    if opt.momentum:
      chain.append(optax.trace(decay=opt.momentum, nesterov=opt.nesterov))
  elif opt.name == 'adam':
    chain.append(optax.scale_by_adam())
  else:
    raise ValueError(f"config.optimizer.name: unknown {opt.name!r} (use 'sgd' or 'adam')")
  if opt.weight_decay and opt.weight_decay_type == 'decoupled':
    chain.append(decay)  # AdamW-style: applied to the update, scaled by the schedule
  chain.append(optax.scale_by_learning_rate(
      learning_rate_schedule(opt, steps_per_epoch, num_epochs)))
  tx = optax.chain(*chain)
  if opt.get('ema_decay', 0.0):
    tx = with_weight_ema(tx, opt.ema_decay)
  return tx


class WeightEmaState(NamedTuple):
  """State of `with_weight_ema`: the inner optimizer's, and the moving average of the
  parameters as they are after each update."""
  inner: optax.OptState
  ema: optax.Params
  count: jax.Array


def with_weight_ema(tx: optax.GradientTransformation,
                    decay: float) -> optax.GradientTransformation:
  """`tx`, keeping a moving average of the parameters in its state (`weight_ema`).

  The decay ramps up as (1 + t) / (10 + t) to `decay`, so the first steps do not hold
  the random init for long. It lives in the optimizer state, so a run without it keeps
  the train state (and checkpoints) it always had. BatchNorm statistics are not
  averaged: evaluation uses the running ones.
  """
  def init(params):
    return WeightEmaState(tx.init(params), jax.tree.map(jnp.copy, params),
                          jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    updates, inner = tx.update(updates, state.inner, params)
    new = optax.apply_updates(params, updates)
    d = jnp.minimum(decay, (1.0 + state.count) / (10.0 + state.count))
    ema = jax.tree.map(lambda e, x: (d * e + (1 - d) * x).astype(e.dtype), state.ema, new)
    return updates, WeightEmaState(inner, ema, optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def weight_ema(opt_state) -> optax.Params | None:
  """The moving average of the parameters kept by `with_weight_ema`, else None."""
  return opt_state.ema if isinstance(opt_state, WeightEmaState) else None
