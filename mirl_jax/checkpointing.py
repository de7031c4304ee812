"""Orbax checkpoints of tickets: params and masks, stored sparse.

A ticket keeps, for each prunable tensor, its surviving values and its mask
as packed bits; other tensors are stored whole, so a sparse ticket takes
about its share of non-zero weights on disk (benchmarks/run_all.py, the
README), and unpacking gives back exactly the same params. Tickets live in
``WORKDIR/tickets/<index>`` (one per round, all kept) next to a JSON item with
what produced them.
"""

import os
from typing import Any, Callable, NamedTuple

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from mirl_jax import masks as masks_lib
from mirl_jax import models

TICKETS = "tickets"  # one per finished round, all kept
REWIND = "rewind"  # late rewinding's params of round 0
THETA_0 = "theta_0"  # imported initial params: a key cannot re-create them
UNUSED = "unused"  # the reference's six unused convs, as of each ticket
CHECKPOINTS = "checkpoints"  # mid-round training state, the newest kept


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
  with _manager(workdir, folder, create=True) as manager:
    manager.save(
        index,
        args=ocp.args.Composite(
            ticket=ocp.args.StandardSave(pack_ticket(params, masks)), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    manager.wait_until_finished()
  return os.path.join(os.path.abspath(workdir), folder, str(index))


def ticket_indices(workdir: str, folder: str = TICKETS) -> list[int]:
  if not os.path.isdir(os.path.join(workdir, folder)):
    return []
  with _manager(workdir, folder, create=False) as manager:
    return list(manager.all_steps())


def ticket_meta(workdir: str, index: int, folder: str = TICKETS) -> dict:
  """The JSON item of ticket `index` alone, without reading its arrays."""
  with _manager(workdir, folder, create=False) as manager:
    return dict(manager.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


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


def restore_ticket(
    workdir: str, index: int | None = None, model=None, folder: str = TICKETS
) -> Ticket:
  """Ticket `index` (default: the latest) of `workdir`.

  With `model`, the ticket's shapes are checked against it first.
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
  with _manager(workdir, folder, create=False) as manager:
    restored = manager.restore(
        index,
        args=ocp.args.Composite(ticket=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
  params, masks = unpack_ticket(restored.ticket)
  if model is not None:
    _check_architecture(params, model, os.path.join(workdir, folder, str(index)))
  return Ticket(params, masks, dict(restored.meta))


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


class TrainCheckpoints:
  """Mid-round state: params and masks (sparse), optimizer, data iterator.

  Steps count over the whole run (round * steps_per_round + step in round).
  The newest two are kept, so a save killed half-way still leaves one.
  """

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    self.max_to_keep = max_to_keep

  def _manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        create=True, max_to_keep=self.max_to_keep, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(
        self.directory, options=options, item_names=("ticket", "opt_state", "meta", "data")
    )

  def save(self, step: int, state, masks: Any, iterator, meta: dict) -> None:
    """`state` on the host (numpy), `masks` dense-True for round 0."""
    with self._manager() as manager:
      manager.save(
          step,
          args=ocp.args.Composite(
              ticket=ocp.args.StandardSave(pack_ticket(state.params, masks)),
              opt_state=ocp.args.StandardSave(pack_opt_state(state.opt_state, state.params, masks)),
              meta=ocp.args.JsonSave(dict(meta, step=step, opt_step=int(state.step))),
              data=grain.checkpoint.CheckpointSave(iterator),
          ),
      )
      manager.wait_until_finished()

  def latest_meta(self) -> dict | None:
    if not os.path.isdir(self.directory):
      return None
    with self._manager() as manager:
      step = manager.latest_step()
      if step is None:
        return None
      return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore(self, step: int, state, iterator):
    """(state with params, optimizer and step restored; masks); sets `iterator`."""
    with self._manager() as manager:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              ticket=ocp.args.StandardRestore(),
              opt_state=ocp.args.StandardRestore(),
              meta=ocp.args.JsonRestore(),
              data=grain.checkpoint.CheckpointRestore(iterator),
          ),
      )
    params, masks = unpack_ticket(restored.ticket)
    opt_state = unpack_opt_state(restored.opt_state, state.opt_state, state.params)
    state = state.replace(
        params=params, opt_state=opt_state, step=np.asarray(restored.meta["opt_step"])
    )
    return state, masks
