"""Checksums of saved tickets and checkpoints: a flipped bit in any file never passes unseen."""

import errno
import os
import shutil
import tempfile
import time

import grain
import jax
import numpy as np
import pytest

from conftest import TINY, flip_bit
from mirl_jax import checkpointing
from mirl_jax import train_checkpoints
from mirl_jax import integrity
from mirl_jax import masks as masks_lib
from mirl_jax import models
from mirl_jax import train_step


def _ticket(keep=0.3):
  params = models.init_params(TINY, jax.random.key(0))
  rng = np.random.default_rng(0)
  masks = jax.tree_util.tree_map_with_path(
      lambda path, p: (rng.random(p.shape) < keep) if masks_lib.is_prunable(path) else None, params
  )
  return jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks)), masks


def _same(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_a_sealed_meta_checks_and_any_changed_value_or_item_is_named():
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  meta = integrity.seal({"round": 1, "curve": [(2, 0.5)]}, trees={"ticket": tree})
  integrity.check(meta, "T", trees={"ticket": tree})  # tuples read back as lists: same digest
  integrity.check(dict(meta, curve=[[2, 0.5]]), "T", trees={"ticket": tree})
  with pytest.raises(integrity.CorruptError, match=r"^T is corrupted: its metadata"):
    integrity.check(dict(meta, round=3), "T", trees={"ticket": tree})
  changed = {"w": tree["w"].copy()}
  changed["w"].view(np.uint32)[1, 2] ^= 1  # one bit of one float
  with pytest.raises(integrity.CorruptError, match=r"^T is corrupted: its 'ticket' does not"):
    integrity.check(meta, "T", trees={"ticket": changed})
  renamed = {"v": tree["w"]}  # the same bytes under another name
  with pytest.raises(integrity.CorruptError, match="'ticket'"):
    integrity.check(meta, "T", trees={"ticket": renamed})
  with pytest.raises(integrity.CorruptError, match="'checksums' is malformed"):
    integrity.check(dict(meta, checksums={"ticket": "x"}), "T", trees={"ticket": tree})


def test_a_save_from_before_checksums_restores_with_a_warning(tmp_path, caplog, monkeypatch):
  params, masks = _ticket()
  monkeypatch.setattr(integrity, "seal", lambda meta, trees=None, digests=None: meta)
  folder = checkpointing.save_ticket(str(tmp_path), 0, params, masks, {"round": 0})
  monkeypatch.undo()
  ticket = checkpointing.restore_ticket(str(tmp_path), 0)
  assert _same(ticket[:2], (params, masks)) and ticket.meta == {"round": 0}
  assert f"{folder} was saved without checksums (an older version)" in caplog.text


def test_reason_names_the_os_error_however_deeply_it_is_wrapped():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/x/y")
    except OSError as e:
      raise ValueError("the save failed") from e
  except ValueError as wrapped:
    assert integrity.reason(wrapped) == "ENOSPC: No space left on device"
  assert integrity.reason(RuntimeError("tensorstore: EIO: Input/output error [x]")) == (
      "EIO: Input/output error"
  )
  assert integrity.reason(RuntimeError("first line\nsecond")) == "first line"


def _files(folder):
  return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)


def _flips(paths):
  """(file, byte position) pairs: the first, middle and last byte of every file."""
  for path in paths:
    size = os.path.getsize(path)
    for position in sorted({0, size // 2, size - 1}):
      yield path, position


def _each_flip(folder, restore, original, paths=None):
  """Flips one bit at a time; returns the files where a flip was detected.

  The folder is put back after each restore, which may remove it as corrupted.
  """
  detected, unread = set(), set()
  backup = os.path.join(tempfile.mkdtemp(), "copy")  # outside the manager's folder
  shutil.copytree(folder, backup)
  for path, position in list(_flips(paths or _files(folder))):
    if not os.path.exists(folder):
      shutil.copytree(backup, folder)
    flip_bit(path, position)
    try:
      got = restore()
    except integrity.CorruptError as e:
      assert str(e).startswith(folder), e  # the error names the save
      detected.add(os.path.relpath(path, folder))
    else:  # a flip that is not detected changed nothing that is restored
      assert _same(got, original), f"{path} byte {position}: changed and not detected"
      unread.add(os.path.relpath(path, folder))
    finally:
      if os.path.exists(path):
        flip_bit(path, position)
  shutil.rmtree(folder, ignore_errors=True)
  shutil.move(backup, folder)
  return detected, unread


def test_a_flipped_bit_in_any_file_of_a_ticket_is_caught_or_harmless(tmp_path):
  params, masks = _ticket()
  folder = checkpointing.save_ticket(str(tmp_path), 2, params, masks, {"round": 2})
  restore = lambda: checkpointing.restore_ticket(str(tmp_path), 2)
  detected, unread = _each_flip(folder, restore, restore())
  # Caught in every kind of file that holds the ticket's metadata, structure, values and
  # masks. What Orbax leaves but does not read back (commit markers, its own timestamps,
  # the per-process files that OCDBT merged) is unread: nothing there can change a ticket.
  for kind in ("meta/metadata", "ticket/_METADATA", "ticket/manifest.ocdbt", "ticket/d/"):
    assert any(name.startswith(kind) for name in detected), (kind, detected)
  assert "_CHECKPOINT_METADATA" in unread and "commit_success.txt" in unread
  with pytest.raises(integrity.CorruptError, match="2 is corrupted"):
    flip_bit(os.path.join(folder, "meta", "metadata"), 3)
    checkpointing.ticket_meta(str(tmp_path), 2)


def _train_state():
  params, masks = _ticket()
  state = train_step.create_train_state(TINY, params, train_step.make_optimizer(1e-3))
  return state.replace(step=np.int32(5)), masks


def _iterator():
  return iter(grain.MapDataset.range(10).to_iter_dataset())


def test_a_corrupted_newest_checkpoint_is_named_and_the_one_before_is_used(tmp_path, caplog):
  state, masks = _train_state()
  checkpoints = train_checkpoints.TrainCheckpoints(str(tmp_path))
  iterator = _iterator()
  for step in (3, 6):
    next(iterator)
    checkpoints.save(step, state, masks, iterator, {"round": 1})
  newest = os.path.join(checkpoints.directory, "6")
  fresh = lambda: train_checkpoints.TrainCheckpoints(str(tmp_path))

  def restore():  # the newest, or CorruptError if it was skipped as corrupted
    got = fresh().restore_latest(1, state, _iterator)
    if got[2]["step"] != 6:
      raise integrity.CorruptError(f"{newest} skipped")
    return got[0].params, got[1], got[0].opt_state, next(got[3])

  original = restore()
  assert original[3] == 2  # the iterator's place: after the 2 batches taken
  # One file of each kind (every file of a ticket: the test above).
  kinds = ("meta/metadata", "ticket/_METADATA", "opt_state/manifest.ocdbt", "opt_state/d/")
  kinds += ("data/process_0-of-1.json",)
  paths = [next(f for f in _files(newest) if kind in f) for kind in kinds]
  detected, _ = _each_flip(newest, restore, original, paths)
  for kind in kinds:
    assert any(name.startswith(kind) for name in detected), (kind, detected)

  # The run goes on from the checkpoint before, and says which one it skipped and why.
  flip_bit(os.path.join(newest, "meta", "metadata"), 5)
  state_back, _, meta, it = fresh().restore_latest(1, state, _iterator)
  assert meta["step"] == 3 and next(it) == 1 and int(state_back.step) == 5
  assert f"{newest} is corrupted" in caplog.text and "older checkpoint is used" in caplog.text
  data_file = os.path.join(checkpoints.directory, "3", "data", "process_0-of-1.json")
  flip_bit(data_file, os.path.getsize(data_file) // 2)
  assert fresh().latest_meta()["step"] == 3  # its metadata still holds
  assert fresh().restore_latest(1, state, _iterator) is None  # no good one: restart the round
  assert not os.path.exists(newest) and fresh().latest_meta() is None  # both removed


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_is_one_error_naming_the_save_and_keeps_every_earlier_one(
    tmp_path, monkeypatch, code
):
  params, masks = _ticket()
  checkpointing.save_ticket(str(tmp_path), 0, params, masks, {"round": 0})
  handler = checkpointing.ocp.handlers.JsonCheckpointHandler

  async def failing_disk(self, *args, **kwargs):
    raise OSError(code, os.strerror(code), "metadata")

  monkeypatch.setattr(handler, "async_save", failing_disk)
  with pytest.raises(integrity.WriteFailed) as failed:
    checkpointing.save_ticket(str(tmp_path), 1, params, masks, {"round": 1})
  name = errno.errorcode[code]
  assert str(failed.value).startswith(
      f"could not write {tmp_path}/tickets/1 ({name}: {os.strerror(code)}); every earlier"
  )
  left = {f: os.path.getsize(f) for f in _files(tmp_path / "tickets")}
  time.sleep(0.5)  # nothing of the failed save goes on writing (a retry would remove it under it)
  assert {f: os.path.getsize(f) for f in _files(tmp_path / "tickets")} == left
  monkeypatch.undo()
  assert checkpointing.ticket_indices(str(tmp_path)) == [0]
  assert _same(checkpointing.restore_ticket(str(tmp_path), 0)[:2], (params, masks))
  checkpointing.save_ticket(str(tmp_path), 1, params, masks, {"round": 1})  # space again
  assert checkpointing.ticket_indices(str(tmp_path)) == [0, 1]
