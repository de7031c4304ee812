"""Lottery-ticket pruning and rewinding (MIR-L's iterative magnitude pruning).

Pruning runs on the host in numpy because the reference's threshold is
numpy's percentile of float32 magnitudes: doing the same here reproduces
its masks bit for bit. Initial params are never stored: they are
re-created from the PRNG key by `models.init_params`, which maps a key to
the same bits every time.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mirl_jax import masks as masks_lib
from mirl_jax import models

SCOPES = ("global", "layerwise")
REWIND_MODES = ("init", "late", "random")
#: Leaves the official code leaves at their trained values when rewinding.
TRAINED_KEPT = ("prompt_param", "temperature")
#: Pruned at half the rate by the layer-wise rule (the final conv).
HALF_RATE_MODULE = "output"


def _prunable_leaves(params: Any, masks: Any):
  """[(path, weights as float32 numpy, mask as bool numpy)] of prunable leaves."""
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_m, _ = jax.tree_util.tree_flatten(masks, is_leaf=lambda x: x is None)
  if len(flat_p) != len(flat_m):
    raise ValueError(
        f"params have {len(flat_p)} leaves but masks have {len(flat_m)}: "
        "masks must be a tree parallel to params (None for non-prunable)"
    )
  out = []
  for (path, p), m in zip(flat_p, flat_m):
    if masks_lib.is_prunable(path) != (m is not None):
      raise ValueError(
          f"mask of {masks_lib.path_name(path)} is "
          f"{'None' if m is None else 'an array'}; expected the opposite"
      )
    if m is not None:
      w, m = np.asarray(p, np.float32), np.asarray(m, bool)
      if w.shape != m.shape:
        raise ValueError(
            f"mask of {masks_lib.path_name(path)} has shape {m.shape}, expected {w.shape}"
        )
      out.append((path, w, m))
  return out


def _alive_magnitudes(w: np.ndarray, m: np.ndarray) -> np.ndarray:
  """|w| of the surviving weights; alive = in the mask and non-zero, as the reference."""
  return np.abs(w[m & (w != 0)])


def global_threshold(params: Any, masks: Any, percent: float) -> np.float32:
  """The `percent`-th percentile of |w| over all alive prunable weights together."""
  alive = np.concatenate([_alive_magnitudes(w, m) for _, w, m in _prunable_leaves(params, masks)])
  if alive.size == 0:
    raise ValueError("no alive prunable weights left to prune")
  return np.percentile(alive, percent)


def prune(params: Any, masks: Any, percent: float, scope: str = "global") -> Any:
  """New masks: 0 where |w| < threshold, else the old mask (the reference rule).

  `global`: one threshold for the whole net; `layerwise`: one per tensor, the
  final `output` conv at percent / 2. A tensor with no survivors stays empty.
  """
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r}: expected one of {SCOPES}")
  if not 0 <= percent < 100:
    raise ValueError(f"percent={percent}: expected a value in [0, 100)")
  leaves = _prunable_leaves(params, masks)
  if scope == "global":
    threshold = global_threshold(params, masks, percent)
  new = {}
  for path, w, m in leaves:
    if scope == "layerwise":
      alive = _alive_magnitudes(w, m)
      if alive.size == 0:
        new[path] = m
        continue
      rate = (
          percent / 2.0 if masks_lib.path_name(path).split("/")[0] == HALF_RATE_MODULE else percent
      )
      threshold = np.percentile(alive, rate)
    new[path] = m & ~(np.abs(w) < threshold)
  return jax.tree_util.tree_map_with_path(
      lambda path, m: None if m is None else new[path], masks, is_leaf=lambda x: x is None
  )


def prune_reference_pool(
    params: Any, masks: Any, unused: Any, unused_masks: Any, percent: float
) -> tuple[Any, Any]:
  """The global rule over the official code's pool: new (masks, unused_masks).

  The reference thresholds every tensor named "weight", the six convs that its
  forward never uses included (convert.unused_shapes). They never train, so
  they enter at their theta_0 values (`unused`) and only their masks change.
  """
  new = prune(
      {"net": params, "unused": unused}, {"net": masks, "unused": unused_masks}, percent, "global"
  )
  return new["net"], new["unused"]


def random_masks(like, alive: int, rng: np.random.Generator):
  """`alive` survivors drawn uniformly over every prunable weight of `like`'s tree
  (the random-pruning control of a ticket study).

  Non-prunable leaves stay None (dense), as everywhere in masks.py.
  """
  leaves, treedef = jax.tree_util.tree_flatten(like, is_leaf=lambda x: x is None)
  sizes = [0 if m is None else np.size(m) for m in leaves]
  flat = np.zeros(sum(sizes), bool)
  flat[rng.choice(flat.size, alive, replace=False)] = True
  parts = np.split(flat, np.cumsum(sizes)[:-1])
  return treedef.unflatten(
      [None if m is None else part.reshape(np.shape(m)) for m, part in zip(leaves, parts)]
  )


def one_shot_masks(trained, alive: int):
  """One global magnitude prune of the dense `trained` params to `alive` survivors
  (the one-shot control of a ticket study).

  `lottery.prune` drops the weights strictly below the `percent`-th percentile
  (linear interpolation) of the n alive magnitudes, i.e. of the sorted list at
  index percent/100 * (n - 1). Putting that index at drop - 1/2 removes exactly
  the `drop` smallest (of distinct magnitudes), where a plain 100 * drop / n can
  be off by one either way.
  """
  all_alive = masks_lib.dense_masks(trained)
  n = masks_lib.count(trained, masks_lib.masks_from_params(trained))["alive"]
  drop = n - alive
  if drop <= 0:
    return all_alive
  return prune(trained, all_alive, 100.0 * (drop - 0.5) / (n - 1), "global")


# ----------------------------------------------------------------------------
# Rewinding.


def rewind_target(
    mode: str, *, model=None, key: jax.Array | None = None, late_params: Any = None
) -> Any:
  """The params survivors are reset to.

  'init': the paper's theta_0, re-created from `key`.
  'late': late rewinding, `late_params` (params at step k of round 0, which the
    training loop must keep, e.g. with `train_step.run_steps(..., callback=)`).
  'random': the lottery-ticket control, a fresh init from a key derived from `key`.
  """
  if mode not in REWIND_MODES:
    raise ValueError(f"rewind mode={mode!r}: expected one of {REWIND_MODES}")
  if mode == "late":
    if late_params is None:
      raise ValueError(
          "rewind mode='late' needs late_params: the params saved at step k of round 0"
      )
    return late_params
  if model is None or key is None:
    raise ValueError(f"rewind mode={mode!r} needs model and key")
  if mode == "random":
    key = jax.random.fold_in(key, 0x5EED)
  return models.init_params(model, key)


def rewind(trained: Any, masks: Any, target: Any, keep_trained: bool = False) -> Any:
  """Survivors back to `target` times the mask, every other leaf to `target`.

  keep_trained=False is the paper (theta = m * theta_0); True keeps
  prompt_param and temperature at their trained values, as the official code
  does (it resets only "weight" and "bias" tensors). Runs on the host, like
  `prune`, and returns numpy arrays: place them with `train_step.replicate`.
  """

  def one(path, t, p, m):
    if keep_trained and masks_lib.path_name(path).rsplit("/", 1)[-1] in TRAINED_KEPT:
      return np.asarray(p)
    t = np.asarray(t)
    return t if m is None else np.where(np.asarray(m), t, np.zeros((), t.dtype))

  return jax.tree_util.tree_map_with_path(one, target, trained, masks, is_leaf=lambda x: x is None)
