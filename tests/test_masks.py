"""masks.count: the totals every summary.json entry, ticket meta and log line reports."""

import jax.numpy as jnp
import numpy as np

from mirl_jax import masks as masks_lib


def _ticket():
  """17 params, 10 prunable (kernel, scale), 7 of them alive, 11 non-zero.

  A surviving weight may be 0 (conv kernel [1, 1]): alive but not non-zero; a never-pruned
  leaf's zeros (the bias) count as params, not as non-zero.
  """
  params = {
      "conv": {
          "kernel": np.array([[1, 0, 2], [3, 0, 0]], np.float32),
          "bias": np.array([0, 5, 0], np.float32),
      },
      "norm": {"scale": np.array([1, 1, 1, 0], np.float32)},
      "prompt": {"prompt_param": np.ones((2, 2), np.float32)},
  }
  masks = {
      "conv": {"kernel": np.array([[1, 0, 1], [1, 1, 0]], bool), "bias": None},
      "norm": {"scale": np.array([1, 1, 1, 0], bool)},
      "prompt": {"prompt_param": None},
  }
  return params, masks


def test_count_of_a_hand_made_ticket():
  params, masks = _ticket()
  assert masks_lib.count(params, masks) == dict(
      params=17, prunable=10, alive=7, nonzero=11, remaining=0.7
  )


def test_count_reads_device_arrays_as_numpy_ones():
  """Runs count tickets still on the device."""
  params, masks = _ticket()
  params = {k: {n: jnp.asarray(v) for n, v in layer.items()} for k, layer in params.items()}
  assert masks_lib.count(params, masks) == dict(
      params=17, prunable=10, alive=7, nonzero=11, remaining=0.7
  )


def test_dense_masks_and_masks_from_params():
  params, _ = _ticket()
  dense = masks_lib.count(params, masks_lib.dense_masks(params))
  assert (dense["alive"], dense["prunable"], dense["remaining"]) == (10, 10, 1.0)
  # The reference's rule for an imported checkpoint: alive = non-zero.
  imported = masks_lib.count(params, masks_lib.masks_from_params(params))
  assert imported["alive"] == 3 + 3 and imported["remaining"] == 0.6
  assert imported["nonzero"] == 11 and imported["params"] == 17
