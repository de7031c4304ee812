"""The training step's layout: each run of identical blocks' params stacked, as the scan takes them.

Tickets, checkpoints, conversion, pruning and reports name every block's params
as the reference does (``encoder_level1_0/attn/qkv/kernel``). A step on that
layout stacks each run's 11 tensors per block for its `lax.scan` and unstacks
their gradients again, and AdamW and the masks update each of the default
network's 542 tensors in kernels of their own: 4,600 compiled kernels. Stacked
once per round instead (135 tensors), the same step compiles 2,500 kernels, in
25 s instead of 39 s, and its process peaks at 2.5 GiB instead of 3.0 on a
2-core Xeon (benchmarks/bench_train_step.py --layout); every update is
elementwise, so the arithmetic is the same. A round stacks its state
on the way in and unstacks it for every checkpoint and for its ticket.
"""

from typing import Any

import jax
import numpy as np

from mirl_jax import models


def _runs(model: models.PromptIR) -> dict[str, tuple[str, ...]]:
  """The runs the model scans (two blocks or more, with scan_blocks on)."""
  if not model.scan_blocks:
    return {}
  return {run: names for run, names in models.block_runs(model).items() if len(names) > 1}


def _is_none(x) -> bool:
  return x is None


def stack(tree: dict, model: models.PromptIR) -> dict:
  """A params-like tree (params, masks, Adam's moments) with each scanned run stacked under its
  key (numpy arrays on the host; None leaves, the masks' unprunable ones, stay None)."""
  tree = dict(tree)
  for run, names in _runs(model).items():
    missing = [n for n in names if n not in tree]
    if missing:
      raise ValueError(f"cannot stack run {run!r}: the tree has no {', '.join(missing)}")
    blocks = [tree.pop(n) for n in names]
    tree[run] = jax.tree.map(
        lambda *leaves: None if leaves[0] is None else np.stack([np.asarray(l) for l in leaves]),
        *blocks,
        is_leaf=_is_none,
    )
  return tree


def unstack(tree: dict, model: models.PromptIR) -> dict:
  """The inverse of `stack`: every block under its own name again (views of the host arrays)."""
  tree = dict(tree)
  for run, names in _runs(model).items():
    if run not in tree:
      continue  # not stacked
    stacked = tree.pop(run)
    for i, name in enumerate(names):
      tree[name] = jax.tree.map(
          lambda x, i=i: None if x is None else np.asarray(x)[i], stacked, is_leaf=_is_none
      )
  return dict(sorted(tree.items()))  # the key order of a tree that jax rebuilt, as init_params's


def _map_state(fn, state, model):
  """fn applied to the params and to every part of the optimizer state shaped like them."""
  treedef = jax.tree.structure(state.params)
  like = lambda node: jax.tree.structure(node) == treedef
  opt_state = jax.tree.map(
      lambda node: fn(node, model) if like(node) else node, state.opt_state, is_leaf=like
  )
  return state.replace(params=fn(state.params, model), opt_state=opt_state)


def stack_state(state: Any, model: models.PromptIR) -> Any:
  """A TrainState (on the host) in the step's layout: params and Adam's moments stacked."""
  return _map_state(stack, state, model)


def unstack_state(state: Any, model: models.PromptIR) -> Any:
  """A TrainState (on the host) back in the per-block layout of checkpoints."""
  return _map_state(unstack, state, model)
