"""The round loop: order of steps, 0.8^k remaining, resume from a round."""

import jax
import numpy as np
import pytest

from mirl_jax import masks as masks_lib, rounds
from mirl_jax.models import PromptIR, param_shapes

TINY = PromptIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1),
                prompt_dims=(8, 8, 8), prompt_sizes=(8, 4, 2), noise_level_heads=1)


def _tree(seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.uniform(-1, 1, s.shape).astype(np.float32),
                      param_shapes(TINY))


def _perturb(r, params, masks):
  """A stand-in for training: moves every weight, keeps pruned ones at 0."""
  rng = np.random.default_rng(100 + r)
  moved = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), params)
  return moved if masks is None else masks_lib.apply_masks(moved, masks)


def test_rounds_reach_point_eight_to_the_k():
  init, events = _tree(0), []

  def train_round(r, params, masks):
    events.append(("train", r, masks is None))
    return _perturb(r, params, masks)

  results = []
  last = rounds.run(init, masks_lib.dense_masks(init), train_round=train_round,
                    rewind_source=lambda r: init, num_rounds=4,
                    on_round_start=lambda r, p, m: events.append(("start", r)),
                    on_round_end=results.append)
  assert events[:4] == [("start", 0), ("train", 0, True), ("start", 1), ("train", 1, False)]
  assert [r.round_index for r in results] == [0, 1, 2, 3, 4] and last is results[-1]
  for res in results:
    total = res.report[-1]
    assert total["layer"] == "total"
    assert total["remaining"] == pytest.approx(0.8 ** res.round_index, rel=0.01)
    assert "total" in res.table
  # pruned weights stay exactly 0 and masks only shrink
  for prev, cur in zip(results, results[1:]):
    for m, m_prev in zip(jax.tree.leaves(cur.masks), jax.tree.leaves(prev.masks)):
      assert not (np.asarray(m) & ~np.asarray(m_prev)).any()
  pruned = jax.tree.leaves(jax.tree.map(
      lambda p, m: None if m is None else np.asarray(p)[~np.asarray(m)],
      last.params, last.masks, is_leaf=lambda x: x is None))
  assert sum(x.size for x in pruned) > 0 and all(np.all(x == 0) for x in pruned)


def test_resume_from_a_round_gives_the_same_result():
  init = _tree(0)
  kwargs = dict(train_round=lambda r, p, m: _perturb(r, p, m), rewind_source=lambda r: init)
  full = []
  rounds.run(init, masks_lib.dense_masks(init), num_rounds=3, on_round_end=full.append,
             **kwargs)
  resumed = rounds.run(full[1].params, full[1].masks, num_rounds=3, start_round=2, **kwargs)
  assert resumed.report == full[-1].report
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full[-1].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="start_round=5"):
    rounds.run(init, masks_lib.dense_masks(init), num_rounds=3, start_round=5, **kwargs)
