"""One data-parallel training step of a (pruned) PromptIR, and the host loop.

The per-device step is a `shard_map` over a one-axis `data` mesh: each device
takes its slice of the global batch, gradients and loss are averaged with
`pmean`, and every device applies the same AdamW update to its replica, so
params, optimizer state and masks stay replicated. As in the reference,
gradients of pruned weights are zeroed before the update and the weights
are re-masked after it, so a pruned weight stays exactly 0.
"""

import ctypes
import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mirl_jax import masks as masks_lib

DATA = "data"
TrainState = train_state.TrainState


def _shard_map(f, mesh, in_specs, out_specs):
  """jax.shard_map (new JAX) or jax.experimental.shard_map (old), unchecked.

  The replication check is off on purpose: with it on, JAX transposes the
  implicit broadcast of replicated params into a psum, so grads arrive
  already summed over devices and an explicit pmean would be wrong by a
  factor of the device count. Off, grads are per-device and pmean averages.
  """
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map  # pylint: disable=import-outside-toplevel

  return shard_map(f, mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


class NonFiniteError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient; carries where it happened."""

  def __init__(self, round_index: int, step: int, loss: float, grad_norm: float):
    self.round_index, self.step, self.loss, self.grad_norm = round_index, step, loss, grad_norm
    super().__init__(
        f"non-finite training values in round {round_index} at step {step}: "
        f"loss={loss}, grad_norm={grad_norm}"
    )


# ----------------------------------------------------------------------------
# Mesh and placement.


def make_mesh(devices=None) -> Mesh:
  """A one-axis `data` mesh over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA,))


def replicate(mesh: Mesh, tree: Any) -> Any:
  """A copy of params / state / masks on every device of the mesh.

  Always a copy, so that the donating step never deletes the caller's arrays
  (device_put alone reuses the buffer already on a mesh device).
  """
  tree = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(mesh: Mesh, local: np.ndarray) -> jax.Array:
  """The global batch from this process's slice (stacked along axis 0)."""
  n = mesh.devices.size
  global_rows = local.shape[0] * jax.process_count()
  if global_rows % n:
    raise ValueError(f"global batch of {global_rows} rows does not split over {n} devices")
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA)), local)


# ----------------------------------------------------------------------------
# Optimizer and state.


def make_optimizer(
    learning_rate: float | optax.Schedule,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_grad_norm: float = 0.0,
) -> optax.GradientTransformation:
  """PyTorch's AdamW defaults (decay 0.01, on every parameter).

  torch decays first (p *= 1 - lr*wd) and then subtracts lr * adam; optax adds
  wd * p to the adam direction and scales by -lr: the same p(1 - lr*wd) - lr*adam.
  clip_grad_norm > 0 first scales each step's gradient down to that global L2 norm
  (as torch's clip_grad_norm_; the reference does not clip).
  """
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if clip_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(clip_grad_norm), adamw)
  return adamw


def create_train_state(model, params: Any, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state (step 0, empty moments): MIR-L restarts the optimizer each round."""
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


# ----------------------------------------------------------------------------
# The step.


def l1_loss(restored: jax.Array, clean: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(restored - clean))


def _grads(state: TrainState, degraded: jax.Array, clean: jax.Array, microbatches: int):
  """Mean L1 loss and its grads, accumulated over `microbatches` equal slices.

  Equal slices make the mean of their means the batch mean, so the result is
  the full batch's up to rounding; only one slice's activations are live.
  """

  def loss_and_grads(params, x, y):
    return jax.value_and_grad(lambda p: l1_loss(state.apply_fn({"params": p}, x), y))(params)

  if microbatches == 1:
    return loss_and_grads(state.params, degraded, clean)
  split = lambda a: a.reshape(microbatches, a.shape[0] // microbatches, *a.shape[1:])

  def body(acc, xy):
    loss, grads = loss_and_grads(state.params, *xy)
    return jax.tree.map(jnp.add, acc, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
  total, _ = jax.lax.scan(body, zeros, (split(degraded), split(clean)))
  return jax.tree.map(lambda t: t / microbatches, total)


def global_norm(tree: Any, masks: Any = None) -> jax.Array:
  """The L2 norm over every leaf (only its kept entries where `masks` has a mask),
  as one reduction over their concatenation.

  optax's tree norm reduces each of the default network's 542 tensors in a
  kernel of its own. One reduction compiles the default training step in 34 s
  instead of 40 s (benchmarks/bench_train_step.py, AMD EPYC, 2026-12-04), at
  the same step time and a slightly lower peak RSS (3.08 against 3.25 GiB).
  Masking the concatenation, not each leaf, saves the step one kernel per
  masked tensor: XLA writes each leaf's masked copy out for the concatenation.
  """
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
  flat = jnp.concatenate(leaves)
  if masks is not None:
    kept = jax.tree.leaves(
        jax.tree.map(
            lambda x, m: jnp.ones(x.shape, bool) if m is None else m,
            tree,
            masks,
            is_leaf=lambda x: x is None,
        )
    )
    flat = jnp.where(jnp.concatenate([jnp.ravel(m).astype(bool) for m in kept]), flat, 0.0)
  return jnp.sqrt(jnp.sum(jnp.square(flat)))


def _local_step(
    state: TrainState, masks: Any, degraded: jax.Array, clean: jax.Array, microbatches: int = 1
):
  """One device's step; masks=None is the dense net (round 0), masking skipped."""
  loss, grads = _grads(state, degraded, clean, microbatches)
  loss, grads = jax.lax.pmean((loss, grads), DATA)
  grad_norm = global_norm(grads, masks)
  if masks is not None:
    grads = masks_lib.apply_masks(grads, masks)
  state = state.apply_gradients(grads=grads)
  if masks is not None:
    state = state.replace(params=masks_lib.apply_masks(state.params, masks))
  return state, {"loss": loss, "grad_norm": grad_norm}


@functools.lru_cache(maxsize=8)
def make_train_step(mesh: Mesh, donate: bool = True, microbatches: int = 1) -> Callable:
  """(state, masks, degraded, clean) -> (state, {'loss', 'grad_norm'}), jitted.

  Cached per mesh, so a run that restarts in the same process (or a round
  after a round) reuses the compiled step instead of compiling it again.

  state and masks replicated (see `replicate`), images sharded along the batch
  (see `shard_batch`). With donate=True the input state's buffers are reused:
  do not touch the old state after the call. microbatches > 1 splits each
  device's batch to bound activation memory (same update, up to rounding).
  """
  if microbatches < 1:
    raise ValueError(f"microbatches={microbatches}: expected >= 1")

  def step(state, masks, degraded, clean):
    local = degraded.shape[0] // mesh.devices.size
    if local % microbatches:
      raise ValueError(
          f"per-device batch of {local} does not split into microbatches={microbatches}"
      )
    f = _shard_map(
        functools.partial(_local_step, microbatches=microbatches),
        mesh,
        in_specs=(P(), P(), P(DATA), P(DATA)),
        out_specs=(P(), P()),
    )
    return f(state, masks, degraded, clean)

  return jax.jit(step, donate_argnums=(0,) if donate else ())


# ----------------------------------------------------------------------------
# The host loop.


def release_freed_memory() -> None:
  """Hands the heap memory that the process has freed back to the OS (glibc only).

  XLA's CPU compiler frees gigabytes after compiling the default network's
  step, but glibc keeps them, and the step's buffers come from fresh mappings:
  without this, the compiler's memory and the step's add up in the peak RSS.
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


def check_finite(metrics: dict, round_index: int, step: int) -> None:
  """Raises NonFiniteError (naming round and step) if loss or grad norm is NaN/Inf."""
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  if not (np.isfinite(loss) and np.isfinite(grad_norm)):
    raise NonFiniteError(round_index, step, loss, grad_norm)


def run_steps(
    step_fn: Callable,
    mesh: Mesh,
    state: TrainState,
    masks: Any,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    round_index: int,
    callback: Callable[[int, TrainState, dict], None] | None = None,
) -> TrainState:
  """Trains on process-local (degraded, clean) batches; returns the final state.

  Each step's metrics are checked one step late so the host never stalls the
  device queue; a non-finite step raises NonFiniteError. `callback(step,
  state, metrics)` runs after each step (step = the 0-based step in the
  round); to keep params past the next (donating) step, copy them with
  `jax.device_get`, e.g. for late rewinding at step k of round 0.
  """
  step = int(jax.device_get(state.step))
  pending = None
  for degraded, clean in batches:
    state, metrics = step_fn(state, masks, shard_batch(mesh, degraded), shard_batch(mesh, clean))
    if pending is None:  # the step has just been compiled (or loaded from the cache)
      release_freed_memory()
    if pending is not None:
      check_finite(pending[1], round_index, pending[0])
    if callback is not None:
      callback(step, state, metrics)
    pending = (step, metrics)
    step += 1
  if pending is not None:
    check_finite(pending[1], round_index, pending[0])
  return state
