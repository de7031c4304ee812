"""The reference's learning-rate schedule: linear warmup, then cosine to 0.

MIR-L steps its LinearWarmupCosineAnnealingLR once per epoch, so the rate
is constant within an epoch and epoch 0 trains at lr 0. The scheduler
computes each epoch's value from the previous one (PyTorch's "chainable"
form); `epoch_rates` replays that recursion in float64 so the values equal
the reference's, not just its closed form, to the last bits.
"""

import math

import jax.numpy as jnp
import numpy as np
import optax


def _check(base_lr: float, warmup_epochs: int, epochs: int) -> None:
  if not 0 <= warmup_epochs < epochs:
    raise ValueError(
        f"warmup_epochs={warmup_epochs}, epochs={epochs}: expected 0 <= warmup_epochs < epochs"
    )
  if base_lr < 0:
    raise ValueError(f"base_lr={base_lr}: expected >= 0")


def epoch_rates(base_lr: float, warmup_epochs: int, epochs: int) -> np.ndarray:
  """float64 (epochs,): the rate in force during each epoch 0..epochs-1."""
  _check(base_lr, warmup_epochs, epochs)
  if warmup_epochs < 1:  # epoch 0 is 0 and each later epoch a multiple of the last
    raise ValueError(
        f"warmup_epochs={warmup_epochs}: the reference's per-epoch schedule "
        "stays at lr 0 for good without warmup; expected >= 1 (or "
        "train.lr_per_epoch=False)"
    )
  w, e = warmup_epochs, epochs
  rates, lr = [], 0.0
  for t in range(e):
    if t == 0:
      lr = 0.0
    elif t < w:
      lr = lr + base_lr / (w - 1)
    elif t == w:
      lr = base_lr
    elif (t - 1 - e) % (2 * (e - w)) == 0:  # never reached for t < epochs; kept for parity
      lr = lr + base_lr * (1 - math.cos(math.pi / (e - w))) / 2
    else:
      lr = (
          (1 + math.cos(math.pi * (t - w) / (e - w)))
          / (1 + math.cos(math.pi * (t - w - 1) / (e - w)))
          * lr
      )
    rates.append(lr)
  return np.asarray(rates, np.float64)


def learning_rate(epoch: int, base_lr: float, warmup_epochs: int, epochs: int) -> float:
  """The rate in force during `epoch` (0-based)."""
  if not 0 <= epoch < epochs:
    raise ValueError(f"epoch={epoch}: expected 0 <= epoch < epochs={epochs}")
  return float(epoch_rates(base_lr, warmup_epochs, epochs)[epoch])


def optax_schedule(
    base_lr: float, warmup_epochs: int, epochs: int, steps_per_epoch: int, per_epoch: bool = True
) -> optax.Schedule:
  """step -> lr for the optimizer.

  per_epoch=True: the reference's staircase (a lookup of `epoch_rates`).
  per_epoch=False: the same curve evaluated at fractional epochs (linear warmup to
  base_lr at epoch W-1, flat to W, cosine to 0 at `epochs`), from optax pieces.
  Steps past the last epoch keep the last rate.
  """
  _check(base_lr, warmup_epochs, epochs)
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch={steps_per_epoch}: expected >= 1")
  if per_epoch:
    table = jnp.asarray(epoch_rates(base_lr, warmup_epochs, epochs), jnp.float32)

    def staircase(step):
      return table[jnp.clip(step // steps_per_epoch, 0, epochs - 1)]

    return staircase
  ramp = max(warmup_epochs - 1, 0) * steps_per_epoch
  pieces = [
      optax.linear_schedule(0.0, base_lr, ramp),
      optax.constant_schedule(base_lr),
      optax.cosine_decay_schedule(base_lr, (epochs - warmup_epochs) * steps_per_epoch),
  ]
  return optax.join_schedules(pieces, [ramp, warmup_epochs * steps_per_epoch])
