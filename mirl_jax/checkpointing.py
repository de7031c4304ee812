"""Orbax checkpoints of tickets: params and masks, stored sparse.

A ticket keeps, for each prunable tensor, its surviving values and its mask
as packed bits; other tensors are stored whole, so a sparse ticket takes
about its share of non-zero weights on disk (benchmarks/run_all.py, the
README), and unpacking gives back exactly the same params. Tickets live in
``WORKDIR/tickets/<index>`` (one per round, all kept) next to a JSON item with
what produced them, sealed with checksums (integrity.py) that every restore
checks.
"""

import contextlib
import os
import sys
import threading
import time
import traceback
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from mirl_jax import integrity
from mirl_jax import masks as masks_lib
from mirl_jax import models

TICKETS = "tickets"  # one per finished round, all kept
REWIND = "rewind"  # late rewinding's params of round 0
THETA_0 = "theta_0"  # imported initial params: a key cannot re-create them
UNUSED = "unused"  # the reference's six unused convs, as of each ticket


def pack_ticket(params: Any, masks: Any) -> Any:
  def pack(p, m):
    p = np.asarray(p)
    if m is None:
      return p
    m = np.asarray(m, bool)
    # Orbax refuses empty arrays: a tensor pruned to nothing keeps one unused
    # zero (unpacking assigns it to no position).
    values = p[m] if m.any() else np.zeros(1, p.dtype)
    return {
        "values": values,
        "bits": np.packbits(m.reshape(-1)),
        "shape": np.asarray(p.shape, np.int64),
    }

  return jax.tree.map(pack, params, masks, is_leaf=lambda x: x is None)


def _is_packed(node) -> bool:
  return isinstance(node, dict) and set(node) == {"values", "bits", "shape"}


def unpack_ticket(packed: Any):
  """Returns (params, masks) as numpy trees."""

  def params_of(node):
    if not _is_packed(node):
      return np.asarray(node)
    shape = tuple(int(s) for s in node["shape"])
    mask = _mask_of(node)
    out = np.zeros(shape, np.asarray(node["values"]).dtype)
    out[mask] = node["values"]
    return out

  def _mask_of(node):
    shape = tuple(int(s) for s in node["shape"])
    size = int(np.prod(shape))
    return np.unpackbits(np.asarray(node["bits"]), count=size).astype(bool).reshape(shape)

  params = jax.tree.map(params_of, packed, is_leaf=_is_packed)
  masks = jax.tree.map(lambda n: _mask_of(n) if _is_packed(n) else None, packed, is_leaf=_is_packed)
  return params, masks


def _manager(workdir: str, folder: str, create: bool) -> ocp.CheckpointManager:
  # A writer removes what a killed save left behind (uncommitted tmp dirs).
  options = ocp.CheckpointManagerOptions(
      create=create, max_to_keep=None, cleanup_tmp_directories=create
  )
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), folder), options=options, item_names=("ticket", "meta")
  )


def save_ticket(
    workdir: str, index: int, params: Any, masks: Any, meta: dict, folder: str = TICKETS
) -> str:
  """Writes ticket `index`; Orbax commits it atomically (tmp dir + rename)."""
  path = os.path.join(os.path.abspath(workdir), folder, str(index))
  packed = pack_ticket(params, masks)
  meta = integrity.seal(meta, trees={"ticket": packed})
  with writing(path), _manager(workdir, folder, create=True) as manager:
    manager.save(
        index,
        args=ocp.args.Composite(ticket=ocp.args.StandardSave(packed), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()
  return path


@contextlib.contextmanager
def writing(path: str):
  """A failed save (full disk, I/O error) as one WriteFailed naming it; earlier saves stay.

  When one item of a save fails, Orbax drops the others' futures while their
  threads go on writing into the save's tmp dir for a moment; a save right
  after (a retry) would remove that dir under them. So the failed save's
  threads are joined before the error is raised.
  """
  before = set(threading.enumerate())
  _drop_late_callbacks()
  try:
    yield
  except integrity.WriteFailed:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Orbax and TensorStore wrap OS errors
    _join_new_threads(before, timeout_s=60.0)
    why = integrity.reason(e)
    fix = "free space" if why.startswith(("ENOSPC", "EDQUOT")) else "mend the cause"
    raise integrity.WriteFailed(
        f"could not write {path} ({why}); every earlier checkpoint and ticket is kept: "
        f"{fix} and run the same command again to resume"
    ) from e


def _join_new_threads(before: set, timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  for thread in set(threading.enumerate()) - before:
    if thread is not threading.current_thread():
      # Orbax's threads raise their own failure again on join: part of the one reported.
      with contextlib.suppress(Exception):
        thread.join(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def reading(path: str):
  """A save that Orbax or TensorStore cannot read as a CorruptError naming it."""
  _drop_late_callbacks()
  try:
    yield
  except (integrity.CorruptError, KeyboardInterrupt):
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise integrity.CorruptError(
        f"{path} is corrupted: it cannot be read ({integrity.reason(e)})"
    ) from e


def _drop_late_callbacks() -> None:
  """The siblings of a failed read or write finish quietly: the failure is reported once.

  Orbax runs an item's TensorStore reads and writes on an event loop that it
  closes as soon as one of them fails; the others finish later on
  TensorStore's threads, and their callbacks meet the closed loop. Python
  reports each as an unraisable `RuntimeError: Event loop is closed` with a
  traceback, around the one error that names the save. Only those are
  dropped, from the first read or write on (they may come before the error
  reaches us); any other unraisable error goes to the hook that was there.
  """
  if getattr(sys.unraisablehook, "drops_late_callbacks", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    late = (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    )
    frames = {f.name for f in traceback.extract_tb(unraisable.exc_traceback)}
    if not (late and "call_soon_threadsafe" in frames):
      previous(unraisable)

  hook.drops_late_callbacks = True
  sys.unraisablehook = hook


def ticket_indices(workdir: str, folder: str = TICKETS) -> list[int]:
  if not os.path.isdir(os.path.join(workdir, folder)):
    return []
  with _manager(workdir, folder, create=False) as manager:
    return list(manager.all_steps())


def ticket_meta(workdir: str, index: int, folder: str = TICKETS) -> dict:
  """The JSON item of ticket `index` alone (checked), without reading its arrays."""
  path = os.path.join(os.path.abspath(workdir), folder, str(index))
  with reading(path), _manager(workdir, folder, create=False) as manager:
    meta = manager.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  return integrity.unsealed(integrity.check_meta(dict(meta), path))


def describe_mismatch(
    missing: list[str], unexpected: list[str], wrong: list[str], shown: int = 3
) -> str:
  """Counts and the first few names of each kind: one line, however many tensors differ."""

  def part(items, one, many):
    names = ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")
    return f"{len(items)} {one if len(items) == 1 else many} ({names})"

  return "; ".join(
      part(items, one, many)
      for items, one, many in (
          (missing, "missing tensor", "missing tensors"),
          (unexpected, "unexpected tensor", "unexpected tensors"),
          (wrong, "shape mismatch", "shape mismatches"),
      )
      if items
  )


def _check_architecture(params: Any, model, where: str) -> None:
  expected = models.param_shapes(model)
  got = {
      masks_lib.path_name(p): np.shape(v)
      for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  want = {
      masks_lib.path_name(p): tuple(v.shape)
      for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]
  }
  wrong = [
      f"{k}: shape {got[k]}, the model expects {want[k]}"
      for k in want
      if k in got and got[k] != want[k]
  ]
  if wrong or set(got) != set(want):
    raise ValueError(
        f"The checkpoint {where} was made for another architecture than config.model: "
        + describe_mismatch(
            [k for k in want if k not in got], [k for k in got if k not in want], wrong
        )
        + "; is --config the one the run was made with?"
    )


class Ticket(NamedTuple):
  """A restored ticket: numpy params, masks (None where not prunable), its JSON item."""

  params: Any
  masks: Any
  meta: dict


def find_ticket(workdir: str, index: int | None = None, folder: str = TICKETS) -> int:
  """The index of ticket `index` (default: the latest) of `workdir`, reading no ticket.

  Raises ValueError, naming what there is, if there is no such ticket.
  """
  indices = ticket_indices(workdir, folder)
  if not indices:
    raise ValueError(
        f"No ticket in {os.path.join(workdir, folder)}: train a run there or "
        "import a PyTorch checkpoint with --mode import first"
    )
  index = max(indices) if index is None else index
  if index not in indices:
    raise ValueError(f"No ticket {index} in {workdir}; it has {sorted(indices)}")
  return index


def restore_ticket(
    workdir: str, index: int | None = None, model=None, folder: str = TICKETS
) -> Ticket:
  """Ticket `index` (default: the latest) of `workdir`.

  With `model`, the ticket's shapes are checked against it first.
  """
  index = find_ticket(workdir, index, folder)
  path = os.path.join(os.path.abspath(workdir), folder, str(index))
  with reading(path), _manager(workdir, folder, create=False) as manager:
    restored = manager.restore(
        index,
        args=ocp.args.Composite(ticket=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
  meta = dict(restored.meta)
  integrity.check(meta, path, trees={"ticket": restored.ticket})
  params, masks = unpack_ticket(restored.ticket)
  if model is not None:
    _check_architecture(params, model, path)
  return Ticket(params, masks, integrity.unsealed(meta))


def save_theta_0(workdir: str, params: Any, unused: Any, meta: dict) -> str:
  """Stores imported initial params (and unused convs, if any): every rewind reads them."""
  tree = {"params": params} if unused is None else {"params": params, "unused": unused}
  return save_ticket(workdir, 0, tree, jax.tree.map(lambda _: None, tree), meta, folder=THETA_0)


def restore_theta_0(workdir: str, model=None):
  """(params, unused or None, meta) of the workdir's imported theta_0, or None if it has none."""
  if not ticket_indices(workdir, THETA_0):
    return None
  tree, _, meta = restore_ticket(workdir, 0, folder=THETA_0)  # masks: None, theta_0 is dense
  if model is not None:
    _check_architecture(tree["params"], model, os.path.join(workdir, THETA_0))
  return tree["params"], tree.get("unused"), meta


def save_unused(workdir: str, index: int, unused: Any, masks: Any) -> None:
  """The unused convs as of ticket `index`; written before the ticket that marks it done."""
  save_ticket(workdir, index, unused, masks, {}, folder=UNUSED)


def restore_unused(workdir: str, index: int):
  """(unused, masks) as of ticket `index`, or None if none were stored."""
  if index not in ticket_indices(workdir, UNUSED):
    return None
  unused, masks, _ = restore_ticket(workdir, index, folder=UNUSED)
  return unused, masks
