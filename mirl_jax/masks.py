"""Masks: a pytree parallel to the params, bool where a weight may be pruned.

The prunable set is the reference's: every PyTorch "weight" (conv and dense
kernels, LayerNorm scales); never prompt components, temperatures or biases.
Non-prunable leaves hold ``None`` in the mask tree, so a mask tree costs one
byte per prunable weight and nothing else.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PRUNABLE_LEAVES = ("kernel", "scale")


def path_name(path) -> str:
  """'encoder_level1_0/attn/qkv/kernel' for a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def is_prunable(path) -> bool:
  return path_name(path).rsplit("/", 1)[-1] in PRUNABLE_LEAVES


def masks_from_params(params: Any) -> Any:
  """Alive = non-zero, as in the reference (a dense init is all alive)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: (np.asarray(p) != 0) if is_prunable(path) else None, params
  )


def dense_masks(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, p: np.ones(p.shape, bool) if is_prunable(path) else None, params
  )


@jax.jit
def apply_masks(params: Any, masks: Any) -> Any:
  """params * mask for prunable leaves; other leaves pass through."""
  return jax.tree.map(
      lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
      params,
      masks,
      is_leaf=lambda x: x is None,
  )


def count(params: Any, masks: Any) -> dict:
  """Totals of a ticket: all params, prunable, alive prunable, non-zero."""
  pairs = jax.tree.leaves(
      jax.tree.map(
          lambda p, m: (
              np.size(p),
              0 if m is None else np.size(m),
              0 if m is None else int(np.count_nonzero(m)),
              int(np.count_nonzero(np.asarray(p))),
          ),
          params,
          masks,
          is_leaf=lambda x: x is None,
      ),
      is_leaf=lambda x: isinstance(x, tuple),
  )
  total, prunable, alive, nonzero = (int(sum(c)) for c in zip(*pairs))
  return dict(
      params=total,
      prunable=prunable,
      alive=alive,
      nonzero=nonzero,
      remaining=alive / max(prunable, 1),
  )
