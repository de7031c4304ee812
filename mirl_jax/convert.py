"""PyTorch (MIR-L / PromptIR) checkpoints to Flax params and masks, and back.

Each Flax leaf has exactly one PyTorch name, derived from its path by a fixed
rule, so converting is a lookup plus a layout change (OIHW -> HWIO, (out, in)
-> (in, out), NCHW prompts -> NHWC). The reference defines six 1x1 convs that
forward never uses; real checkpoints carry them. The network here has no use
for them, so they travel beside the params as their own small tree (`unused_*`):
its strict `load_state_dict` wants them back, and its global pruning pool counts them.
"""

import argparse
import functools
import os
import pickle
import re
from typing import Any, Mapping

import jax
import numpy as np

from mirl_jax import masks as masks_lib
from mirl_jax import models

UNUSED = (
    "chnl_reduce1",
    "chnl_reduce2",
    "chnl_reduce3",
    "reduce_noise_channel_1",
    "reduce_noise_channel_2",
    "reduce_noise_channel_3",
)
LIGHTNING_PREFIX = "net."
_SEQUENCES = (
    "encoder_level1",
    "encoder_level2",
    "encoder_level3",
    "latent",
    "decoder_level3",
    "decoder_level2",
    "decoder_level1",
    "refinement",
)
_RESAMPLE = re.compile(r"^(down|up)\d_\d$")


def torch_name(path: tuple[str, ...]) -> str:
  """('encoder_level1_0', 'norm1', 'scale') -> 'encoder_level1.0.norm1.body.weight'."""
  head, *rest = path
  prefix, _, index = head.rpartition("_")
  if prefix in _SEQUENCES:
    head = f"{prefix}.{index}"
  elif head == "patch_embed":
    head = "patch_embed.proj"
  elif _RESAMPLE.match(head):
    head = f"{head}.body.0"
  parts = [head]
  for part in rest[:-1]:
    parts.append(f"{part}.body" if part in ("norm1", "norm2") else part)
  leaf = rest[-1]
  parts.append("weight" if leaf in masks_lib.PRUNABLE_LEAVES else leaf)
  return ".".join(parts)


#: (leaf name, rank or None for any) -> (PyTorch layout to Flax's, Flax's to PyTorch's).
_LAYOUTS = {
    ("kernel", 4): (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    ("kernel", 2): (np.transpose, np.transpose),
    ("temperature", None): (lambda a: a.reshape(-1), lambda a: a.reshape(-1, 1, 1)),
    ("prompt_param", None): (
        lambda a: a[0].transpose(0, 2, 3, 1),
        lambda a: a.transpose(0, 3, 1, 2)[None],
    ),
}


def _layout(leaf: str, array: np.ndarray, direction: int) -> np.ndarray:
  pair = _LAYOUTS.get((leaf, array.ndim)) or _LAYOUTS.get((leaf, None))
  return array if pair is None else pair[direction](array)


def _to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  return _layout(leaf, array, 0)


def _to_torch(leaf: str, array: np.ndarray) -> np.ndarray:
  return _layout(leaf, array, 1)


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _unprefixed(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """The Lightning prefix dropped, if every key has it."""
  keys = list(state_dict)
  if keys and all(k.startswith(LIGHTNING_PREFIX) for k in keys):
    return {k[len(LIGHTNING_PREFIX) :]: v for k, v in state_dict.items()}
  return state_dict


def _strip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drop the Lightning prefix (if every key has it) and the unused convs."""
  return {k: v for k, v in _unprefixed(state_dict).items() if k.split(".")[0] not in UNUSED}


def unused_shapes(model: models.PromptIR) -> dict[str, tuple[int, int]]:
  """(in, out) channels of the six unused 1x1 convs, by the reference's formulas.

  With the reference's prompt dims (64, 128, 320): 64->64, 128->128, 320->256,
  dim+64->dim, 2dim+128->2dim, 4dim+256->4dim.
  """
  p1, p2, p3 = model.prompt_dims
  d = model.dim
  return {
      "chnl_reduce1": (p1, p1),
      "chnl_reduce2": (p2, p2),
      "chnl_reduce3": (p3, 2 * p2),
      "reduce_noise_channel_1": (d + p1, d),
      "reduce_noise_channel_2": (2 * d + p2, 2 * d),
      "reduce_noise_channel_3": (4 * d + 2 * p2, 4 * d),
  }


def unused_init(model: models.PromptIR, key: jax.Array) -> dict:
  """The six unused convs as PyTorch initialises them, from a key derived from `key`.

  {name: {'kernel': (1, 1, in, out)}}, U(-1/sqrt(in), 1/sqrt(in)), numpy float32.
  """
  out = {}
  for i, (name, (cin, cout)) in enumerate(unused_shapes(model).items()):
    u = np.asarray(
        jax.random.uniform(
            jax.random.fold_in(jax.random.fold_in(key, 0x0C0417), i), (1, 1, cin, cout)
        )
    )
    out[name] = {"kernel": ((2.0 * u - 1.0) * np.float32(cin**-0.5)).astype(np.float32)}
  return out


def unused_from_torch(state_dict: Mapping[str, Any], model: models.PromptIR) -> dict | None:
  """The six unused convs of a state dict (see `unused_init`), or None if it has none.

  A file with some but not all of them, or of other shapes, raises a ValueError.
  """
  state_dict = _unprefixed(state_dict)
  shapes = unused_shapes(model)
  found = [n for n in shapes if f"{n}.weight" in state_dict]
  if not found:
    return None
  out = {}
  for name, (cin, cout) in shapes.items():
    if name not in found:
      raise ValueError(
          f"the state_dict has {', '.join(found)} but not {name}.weight: "
          "expected all six unused convs of the reference or none"
      )
    w = _as_numpy(state_dict[f"{name}.weight"])
    if w.shape != (cout, cin, 1, 1):
      raise ValueError(f"{name}.weight: got {w.shape}, expected {(cout, cin, 1, 1)}")
    out[name] = {"kernel": _to_flax("kernel", w)}
  return out


def _torch_shape(leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  return _to_torch(leaf, np.broadcast_to(np.float32(0), flax_shape)).shape


@functools.lru_cache(maxsize=4)
def _flat_shapes(model: models.PromptIR):
  """Tracing the network takes a second: once per config is enough."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(models.param_shapes(model))
  return tuple(flat), treedef


def params_from_torch(state_dict: Mapping[str, Any], model: models.PromptIR | None = None):
  """Returns (params, masks) for `model` (default: MIR-L's PromptIR).

  Masks mark the non-zero entries of prunable tensors: the surviving weights
  of a pruned ticket. A state_dict of another architecture raises one
  ValueError of one line: the counts of missing, unexpected and mismatched
  tensors with the first few of each, since a full list runs to hundreds of
  lines when the config differs from the checkpoint's.
  """
  state_dict = _strip(state_dict)
  flat, treedef = _flat_shapes(model or models.PromptIR())
  names = [torch_name(tuple(masks_lib.path_name(p).split("/"))) for p, _ in flat]
  missing = [n for n in names if n not in state_dict]
  known = set(names)
  unexpected = [n for n in state_dict if n not in known]  # in the network's order
  order = {n: i for i, n in enumerate(state_dict)}
  leaves, wrong = [], []
  for (path, shape), name in zip(flat, names):
    if name not in state_dict:
      continue
    leaf = masks_lib.path_name(path).rsplit("/", 1)[-1]
    array = _to_flax(leaf, _as_numpy(state_dict[name]))
    if array.shape != shape.shape:
      wrong.append(
          (
              order[name],
              f"{name}: got {tuple(np.shape(state_dict[name]))}, "
              f"expected {_torch_shape(leaf, shape.shape)}",
          )
      )
    leaves.append(array)
  wrong = [w for _, w in sorted(wrong)]
  if missing or unexpected or wrong:
    from mirl_jax import checkpointing  # pylint: disable=import-outside-toplevel  (needs grain)

    raise ValueError(
        "The state_dict does not match PromptIR: "
        + checkpointing.describe_mismatch(missing, unexpected, wrong)
        + "; is --config the one the checkpoint was made with?"
    )
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  return params, masks_lib.masks_from_params(params)


def params_to_torch(params: Any) -> dict[str, np.ndarray]:
  """The PyTorch state_dict (plain PromptIR names, numpy arrays) of `params`."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    parts = tuple(masks_lib.path_name(path).split("/"))
    out[torch_name(parts)] = np.ascontiguousarray(_to_torch(parts[-1], np.asarray(leaf)))
  return out


#: Classes a checkpoint may hold besides tensors and plain containers: inert
#: records with no code of their own. Lightning stores the argparse options a
#: LightningModule saved with `save_hyperparameters()` as a Namespace.
SAFE_CLASSES = (argparse.Namespace,)
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+)")


def _unreadable(path: str, what: str) -> ValueError:
  """One line in place of the reader's own error, which may span pages."""
  size = os.path.getsize(path)
  return ValueError(
      f"{path} is not a readable {what}: its {size:,} bytes are truncated, "
      "damaged or another kind of file"
  )


def _torch_load(path: str):
  """torch.load that unpickles tensors, plain containers and SAFE_CLASSES only.

  Never arbitrary classes: unpickling one can run any code, and mirl_jax only
  needs the weights. A refusal names the class instead of repeating torch's
  advice to turn the check off.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(
        f"Reading {path} needs PyTorch: pip install 'mirl_jax[torch]' (or pip install torch)."
    ) from None
  serialization = torch.serialization
  try:
    if hasattr(serialization, "safe_globals"):  # torch >= 2.5
      with serialization.safe_globals(list(SAFE_CLASSES)):
        return torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(serialization, "add_safe_globals"):  # torch 2.4
      serialization.add_safe_globals(list(SAFE_CLASSES))
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    found = _GLOBAL.search(str(e))
  except Exception:  # torch raises many kinds for a bad file
    found = None
  if found is None:
    raise _unreadable(path, "PyTorch checkpoint (a zip archive written by torch.save)")
  name = found.group(1)
  if name in {f"{c.__module__}.{c.__qualname__}" for c in SAFE_CLASSES}:
    raise ValueError(
        f"{path} holds {name}, which PyTorch {torch.__version__} cannot allow "
        "when reading weights only: install torch>=2.4"
    )
  raise ValueError(
      f"{path} holds a pickled {name}, which mirl_jax refuses to unpickle: it reads "
      "weights only (tensors, numbers, strings, plain containers, argparse.Namespace); "
      "save the state_dict alone, e.g. torch.save(net.state_dict(), 'weights.pth')"
  )


def _npz_load(path: str) -> dict[str, np.ndarray]:
  """The arrays of an `.npz` file; keys may carry a `state_dict/` prefix."""
  try:
    with np.load(path, allow_pickle=False) as data:
      prefixed = [k for k in data.files if k.startswith("state_dict/")]
      if prefixed:
        return {k[len("state_dict/") :]: data[k] for k in prefixed}
      return {k: data[k] for k in data.files}
  except Exception:  # numpy, zipfile and zlib raise many kinds
    pass
  raise _unreadable(path, ".npz archive (arrays written by numpy.savez)")


def load_state_dict(path: str) -> dict[str, Any]:
  """Reads `.ckpt` / `.pth` / `.pt` (needs torch) or `.npz` state-dict files.

  A `.ckpt` may be a whole Lightning checkpoint (optimizer and scheduler
  states, hyper-parameters): only its `state_dict` is used. In `.npz` files
  keys may carry a `state_dict/` prefix (the reference fixture's form); other
  arrays in the file are ignored. A file that cannot be read raises a
  ValueError of one line.
  """
  if not os.path.isfile(path):
    raise ValueError(f"Checkpoint file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    return _npz_load(path)
  if ext in (".ckpt", ".pth", ".pt"):
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
      obj = obj["state_dict"]  # Lightning checkpoint
    if not isinstance(obj, Mapping):
      raise ValueError(
          f"{path} holds a {type(obj).__name__}, expected a state_dict "
          "(a mapping of names to tensors) or a Lightning checkpoint"
      )
    return dict(obj)
  raise ValueError(
      f"Unknown checkpoint format {ext!r} for {path}: expected .ckpt, .pth, .pt or .npz"
  )


def _read(path: str, model: models.PromptIR):
  """(params, masks, unused convs or None) of a state-dict file; errors name the file."""
  try:
    state_dict = load_state_dict(path)
    params, masks = params_from_torch(state_dict, model)
    return params, masks, unused_from_torch(state_dict, model)
  except ValueError as e:
    raise ValueError(str(e) if path in str(e) else f"{path}: {e}") from None


def import_checkpoint(path: str, workdir: str, model: models.PromptIR, init_path: str = "") -> dict:
  """Converts `path` into ticket 0 and `init_path` into theta_0 of an empty workdir.

  Either may be empty. theta_0 (the reference's `initial_state_dict.pth`) is
  what every later round rewinds to; without it a run cannot continue here.
  Returns the counts of the ticket (of theta_0 when no ticket is imported).
  """
  from mirl_jax import checkpointing  # pylint: disable=import-outside-toplevel

  existing = checkpointing.ticket_indices(workdir)
  if existing or checkpointing.ticket_indices(workdir, checkpointing.THETA_0):
    held = f"tickets {existing}" if existing else "an imported theta_0"
    raise ValueError(
        f"{workdir} already holds {held}; import into an "
        "empty workdir so that nothing saved is overwritten"
    )
  ticket = _read(path, model) if path else None
  theta_0 = _read(init_path, model) if init_path else None
  if theta_0 is not None:
    params, masks, unused = theta_0
    dead = masks_lib.count(params, masks)
    if dead["alive"] != dead["prunable"]:
      raise ValueError(
          f"{init_path} has {dead['prunable'] - dead['alive']:,} zero weights: "
          "expected initial weights (theta_0, dense), not a pruned ticket"
      )
    checkpointing.save_theta_0(
        workdir, params, unused, dict(imported_from=os.path.abspath(init_path))
    )
  if ticket is None:
    return masks_lib.count(theta_0[0], theta_0[1])
  params, masks, unused = ticket
  counts = masks_lib.count(params, masks)
  if unused is not None:
    checkpointing.save_unused(workdir, 0, unused, masks_lib.masks_from_params(unused))
  checkpointing.save_ticket(
      workdir, 0, params, masks, meta=dict(imported_from=os.path.abspath(path), **counts)
  )
  return counts
