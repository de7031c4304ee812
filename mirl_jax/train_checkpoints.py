"""Mid-round training state: params and masks (sparse), optimizer, data iterator.

A preempted round resumes from the newest of these (WORKDIR/checkpoints/<step>)
and ends as if never stopped. Adam's moments are zero where a weight is pruned,
so they are stored packed like the ticket; every save is sealed with checksums
(integrity.py), and a corrupted newest checkpoint gives way to the one before.
"""

import os
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mirl_jax import integrity
from mirl_jax.checkpointing import pack_ticket, reading, unpack_ticket, writing

CHECKPOINTS = "checkpoints"  # mid-round training state, the newest kept


def _param_shaped(params: Any) -> Callable[[Any], bool]:
  treedef = jax.tree.structure(params)
  return lambda node: jax.tree.structure(node) == treedef


def pack_opt_state(opt_state: Any, params: Any, masks: Any) -> dict:
  """The optimizer state with its param-shaped parts (Adam's moments) packed.

  A pruned weight's grads are masked, so its moments stay exactly 0 and pack
  like the params; a part that is not 0 there is stored whole instead.
  Keys are positions in the flattened state (tuple of optax states).
  """
  like = _param_shaped(params)
  nodes = jax.tree.leaves(opt_state, is_leaf=like)
  pruned = jax.tree.map(
      lambda m: None if m is None else ~np.asarray(m, bool), masks, is_leaf=lambda x: x is None
  )

  def zero_where_pruned(node):
    return all(
        x is None or not np.any(np.asarray(v)[x])
        for v, x in zip(jax.tree.leaves(node), jax.tree.leaves(pruned, is_leaf=lambda x: x is None))
    )

  def part(node):
    if not like(node):
      return np.asarray(node)
    return pack_ticket(node, masks) if zero_where_pruned(node) else jax.tree.map(np.asarray, node)

  return {str(i): part(n) for i, n in enumerate(nodes)}


def unpack_opt_state(stored: dict, target: Any, params: Any) -> Any:
  """`stored` (see pack_opt_state) back into the structure of `target`."""
  like = _param_shaped(params)
  nodes, treedef = jax.tree.flatten(target, is_leaf=like)
  if len(stored) != len(nodes):
    raise ValueError(
        f"the checkpoint's optimizer state has {len(stored)} parts, "
        f"the configured optimizer {len(nodes)}: was the config changed?"
    )
  parts = [stored[str(i)] for i in range(len(nodes))]
  return jax.tree.unflatten(
      treedef,
      [
          jax.tree.unflatten(jax.tree.structure(n), jax.tree.leaves(unpack_ticket(p)[0]))
          if like(n)
          else np.asarray(p)
          for n, p in zip(nodes, parts)
      ],
  )


def _iterator_state(iterator) -> Any:
  state = iterator.get_state()
  return state if isinstance(state, dict) else bytes(state).decode()


def _data_digests(iterator) -> dict:
  """Every process's iterator-state digest (each process saves its own state file)."""
  digest = integrity.json_digest(_iterator_state(iterator))
  if jax.process_count() == 1:
    return {"data_0": digest}
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  everyone = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(digest), np.uint8))
  return {f"data_{i}": bytes(np.asarray(d)).hex() for i, d in enumerate(everyone)}


def _on_every_process(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class TrainCheckpoints:
  """Mid-round state: params and masks (sparse), optimizer, data iterator.

  Steps count over the whole run (round * steps_per_round + step in round).
  The newest two are kept, so a save killed half-way, or one found corrupted,
  still leaves one.
  """

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    self.max_to_keep = max_to_keep
    self._bad = set()  # steps found corrupted: reported once

  def _manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        create=True, max_to_keep=self.max_to_keep, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(
        self.directory, options=options, item_names=("ticket", "opt_state", "meta", "data")
    )

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, masks: Any, iterator, meta: dict) -> None:
    """`state` on the host (numpy), `masks` dense-True for round 0."""
    ticket = pack_ticket(state.params, masks)
    opt_state = pack_opt_state(state.opt_state, state.params, masks)
    meta = dict(meta, step=step, opt_step=int(state.step))
    meta = integrity.seal(
        meta, trees={"ticket": ticket, "opt_state": opt_state}, digests=_data_digests(iterator)
    )
    with writing(self._path(step)), self._manager() as manager:
      manager.save(
          step,
          args=ocp.args.Composite(
              ticket=ocp.args.StandardSave(ticket),
              opt_state=ocp.args.StandardSave(opt_state),
              meta=ocp.args.JsonSave(meta),
              data=grain.checkpoint.CheckpointSave(iterator),
          ),
      )
      manager.wait_until_finished()

  def _skip(self, step: int, error: integrity.CorruptError) -> None:
    if step not in self._bad:
      self._bad.add(step)
      logging.warning("%s; an older checkpoint is used instead", error)

  def _metas(self):
    """(step, checked meta) of every readable checkpoint, newest first."""
    if not os.path.isdir(self.directory):
      return
    with self._manager() as manager:
      steps = sorted(manager.all_steps(), reverse=True)
      for step in steps:
        try:
          with reading(self._path(step)):
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
          yield step, integrity.check_meta(dict(meta), self._path(step))
        except integrity.CorruptError as e:
          self._skip(step, e)

  def latest_meta(self) -> dict | None:
    """The newest checkpoint's JSON item whose checksum holds (corrupted ones are skipped)."""
    return next((integrity.unsealed(meta) for _, meta in self._metas()), None)

  def restore_latest(self, round_index: int, state, make_iterator):
    """(state, masks, meta, iterator) of the newest good checkpoint of the round, or None.

    A checkpoint that fails its checksums (on any process) is reported by name
    and the one before it is tried, each with a new iterator from
    `make_iterator()`; the corrupted ones are then removed, so that the steps
    they held can be saved again.
    """
    found = None
    for step, meta in list(self._metas()):
      if meta["round"] != round_index:
        break
      iterator, error = make_iterator(), None
      try:
        restored = self._restore(step, meta, state, iterator)
      except integrity.CorruptError as e:
        error = e
      if _on_every_process(error is None):
        found = (*restored, integrity.unsealed(meta), iterator)
        break
      self._skip(step, error or integrity.CorruptError(f"{self._path(step)} is corrupted"))
      if hasattr(iterator, "close"):
        iterator.close()
    if self._bad:
      with self._manager() as manager:
        for step in sorted(self._bad & set(manager.all_steps())):
          logging.warning("Removing the corrupted checkpoint %s", self._path(step))
          manager.delete(step)
    return found

  def _restore(self, step: int, meta: dict, state, iterator):
    path = self._path(step)
    with reading(path), self._manager() as manager:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              ticket=ocp.args.StandardRestore(),
              opt_state=ocp.args.StandardRestore(),
              data=grain.checkpoint.CheckpointRestore(iterator),
          ),
      )
    integrity.check(
        meta,
        path,
        trees={"ticket": restored.ticket, "opt_state": restored.opt_state},
        digests={f"data_{jax.process_index()}": integrity.json_digest(_iterator_state(iterator))},
    )
    params, masks = unpack_ticket(restored.ticket)
    opt_state = unpack_opt_state(restored.opt_state, state.opt_state, state.params)
    state = state.replace(params=params, opt_state=opt_state, step=np.asarray(meta["opt_step"]))
    return state, masks
