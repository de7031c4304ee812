"""Sparse tickets in Orbax checkpoints."""

import gc
import os
import re
import sys
import time

import jax
import numpy as np
import pytest

from conftest import TINY, TINY_MODEL_KWARGS, flip_bit
from mirl_jax import checkpointing
from mirl_jax import integrity
from mirl_jax import train_checkpoints
from mirl_jax import masks as masks_lib
from mirl_jax import models

# The tiny network twice as wide, for a test of bytes on disk: its tensors outweigh the
# fixed size of a checkpoint's metadata, which at TINY's width is most of it.
WIDER = models.PromptIR(**dict(TINY_MODEL_KWARGS, dim=8, prompt_dims=(8, 8, 8)))


def _ticket(seed=0, keep=0.3, model=TINY):
  params = models.init_params(model, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  masks = jax.tree.map(lambda p: rng.random(p.shape) < keep, params)
  masks = jax.tree_util.tree_map_with_path(
      lambda path, m: m if masks_lib.is_prunable(path) else None, masks
  )
  return jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks)), masks


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_pack_unpack_is_exact():
  params, masks = _ticket()
  again, masks_again = checkpointing.unpack_ticket(checkpointing.pack_ticket(params, masks))
  assert _equal(params, again) and _equal(masks, masks_again)
  assert jax.tree.structure(masks_again) == jax.tree.structure(masks)


def test_sparse_ticket_of_the_default_network_is_small(reference_ticket):
  params, masks = reference_ticket  # 6.2M of 35.4M parameters are non-zero
  packed = checkpointing.pack_ticket(params, masks)
  sparse = sum(np.asarray(x).nbytes for x in jax.tree.leaves(packed))
  dense = 4 * masks_lib.count(params, masks)["params"]
  nonzero = masks_lib.count(params, masks)["nonzero"] / masks_lib.count(params, masks)["params"]
  # values + one bit per prunable weight: at most what it costs to store the non-zeros
  # plus 1/32 of the dense bytes, plus the (few) zeros of never-pruned tensors
  assert sparse <= (nonzero + 1 / 32 + 0.01) * dense
  assert _equal(checkpointing.unpack_ticket(packed)[0], params)


def test_fully_pruned_tensors_save_and_restore(tmp_path):
  params, masks = _ticket(keep=0.3)
  masks["patch_embed"]["kernel"][:] = False  # lottery.prune may empty a tensor
  params = jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks))
  checkpointing.save_ticket(str(tmp_path), 0, params, masks, {})
  again, masks_again, _ = checkpointing.restore_ticket(str(tmp_path), 0)
  assert _equal(params, again) and _equal(masks, masks_again)


def _disk_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_a_ten_percent_ticket_of_the_default_network_is_under_15_percent(tmp_path):
  """10% of ALL params non-zero (never-pruned tensors whole), vs dense float32."""
  shapes = models.param_shapes(models.PromptIR())
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
  prunable = jax.tree_util.tree_map_with_path(lambda path, p: masks_lib.is_prunable(path), params)
  total = sum(p.size for p in jax.tree.leaves(params))
  fixed = sum(p.size for p, k in zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if not k)
  keep = (0.10 * total - fixed) / (total - fixed)  # ~3.5% of the prunable weights
  masks = jax.tree.map(lambda p, k: rng.random(p.shape) < keep if k else None, params, prunable)
  params = jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks))
  counts = masks_lib.count(params, masks)
  assert abs(counts["nonzero"] / counts["params"] - 0.10) < 0.001

  path = checkpointing.save_ticket(str(tmp_path), 0, params, masks, {})
  assert _disk_bytes(path) <= 0.15 * 4 * total
  again, masks_again, _ = checkpointing.restore_ticket(str(tmp_path), 0)
  assert _equal(params, again) and _equal(masks, masks_again)


def test_save_restore_and_meta(tmp_path):
  params, masks = _ticket()
  checkpointing.save_ticket(str(tmp_path), 0, params, masks, {"round": 0})
  params1, masks1 = _ticket(seed=1)
  checkpointing.save_ticket(str(tmp_path), 1, params1, masks1, {"round": 1})
  assert checkpointing.ticket_indices(str(tmp_path)) == [0, 1]
  got, got_masks, meta = checkpointing.restore_ticket(str(tmp_path), model=TINY)
  assert meta == {"round": 1} and _equal(got, params1) and _equal(got_masks, masks1)
  ticket = checkpointing.restore_ticket(str(tmp_path), 0)
  assert ticket.meta == {"round": 0} and _equal(ticket.params, params)
  assert _equal(ticket.masks, masks)


def test_restore_errors(tmp_path):
  with pytest.raises(ValueError, match="No ticket in .*--mode import"):
    checkpointing.restore_ticket(str(tmp_path))
  params, masks = _ticket()
  checkpointing.save_ticket(str(tmp_path), 0, params, masks, {})
  with pytest.raises(ValueError, match=r"No ticket 5 .* has \[0\]"):
    checkpointing.restore_ticket(str(tmp_path), 5)
  other = models.PromptIR(**dict(TINY_MODEL_KWARGS, dim=2 * TINY.dim))  # twice as wide
  with pytest.raises(ValueError) as error:
    checkpointing.restore_ticket(str(tmp_path), model=other)
  message = str(error.value)
  assert "\n" not in message and "another architecture than config.model" in message
  assert re.search(
      r"126 shape mismatches \(decoder_level1_0/attn/project_out/kernel: shape "
      r"\(1, 1, 8, 8\), the model expects \(1, 1, 16, 16\), .*, \.\.\.\)",
      message,
  ), message
  assert message.endswith("is --config the one the run was made with?")
  assert os.listdir(tmp_path / "tickets") == ["0"]  # nothing was touched


def test_a_ticket_that_cannot_be_read_is_reported_once_without_its_reads_tracebacks(
    tmp_path, monkeypatch
):
  """The reads that outlive the failed one leave no `Event loop is closed` tracebacks."""
  params, masks = _ticket(model=WIDER)
  folder = checkpointing.save_ticket(str(tmp_path), 0, params, masks, {})
  data = max(
      (os.path.join(d, f) for d, _, files in os.walk(folder) for f in files), key=os.path.getsize
  )
  for position in range(200, os.path.getsize(data), 997):  # every block: most reads fail
    flip_bit(data, position)
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  for _ in range(5):
    with pytest.raises(integrity.CorruptError, match=r"0 is corrupted: it cannot"):
      checkpointing.restore_ticket(str(tmp_path), 0, model=WIDER)
  time.sleep(1.0)  # the other reads finish on TensorStore's threads
  gc.collect()
  assert [repr(u.exc_value) for u in reported] == []
  other = type("Unraisable", (), dict(exc_value=RuntimeError("Event loop is closed")))
  other.exc_traceback = None  # not a callback meeting a closed loop: passed on
  sys.unraisablehook(other)
  assert reported == [other]


def test_train_checkpoints_store_adam_moments_sparse_and_restore_exactly(tmp_path):
  import grain  # pylint: disable=import-outside-toplevel
  from mirl_jax import train_step  # pylint: disable=import-outside-toplevel

  params, masks = _ticket(keep=0.1, model=WIDER)
  state = train_step.create_train_state(WIDER, params, train_step.make_optimizer(1e-3))
  rng = np.random.default_rng(1)
  adam, *rest = state.opt_state
  moment = lambda: jax.tree.map(  # as training leaves them: 0 where pruned
      lambda p, m: np.float32(rng.random(p.shape)) * (1 if m is None else m),
      params,
      masks,
      is_leaf=lambda x: x is None,
  )
  nu = moment()
  nu["patch_embed"]["kernel"][0, 0, 0, 0] = 0.5  # not 0 where pruned: this part stays whole
  state = state.replace(
      opt_state=(adam._replace(count=np.int32(7), mu=moment(), nu=nu), *rest), step=np.int32(7)
  )
  iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(iterator)
  checkpoints = train_checkpoints.TrainCheckpoints(str(tmp_path))
  checkpoints.save(3, state, masks, iterator, {"round": 1})

  fresh = train_step.create_train_state(WIDER, params, train_step.make_optimizer(1e-3))
  restored, restored_masks, meta, iterator = checkpoints.restore_latest(
      1, fresh, lambda: iter(grain.MapDataset.range(10).to_iter_dataset())
  )
  assert meta["step"] == 3 and meta["round"] == 1
  assert _equal(restored.opt_state, state.opt_state) and _equal(restored_masks, masks)
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
  assert int(restored.step) == 7 and next(iterator) == 1
  moments = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state.opt_state[0].mu))
  assert _disk_bytes(tmp_path / "checkpoints" / "3" / "opt_state") < 0.5 * 2 * moments
