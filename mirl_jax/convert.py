"""PyTorch (MIR-L / PromptIR) checkpoints to Flax params and masks, and back.

Each Flax leaf has exactly one PyTorch name, derived from its path by a fixed
rule, so converting is a lookup plus a layout change (OIHW -> HWIO, (out, in)
-> (in, out), NCHW prompts -> NHWC). The reference defines six 1x1 convs that
forward never uses; real checkpoints carry them, and they are dropped here.
"""

import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from mirl_jax import checkpointing
from mirl_jax import masks as masks_lib
from mirl_jax import models

UNUSED = ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
          "reduce_noise_channel_1", "reduce_noise_channel_2", "reduce_noise_channel_3")
LIGHTNING_PREFIX = "net."
_SEQUENCES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent",
              "decoder_level3", "decoder_level2", "decoder_level1", "refinement")
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


def _to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  if leaf == "temperature":
    return array.reshape(-1)
  if leaf == "prompt_param":
    return array[0].transpose(0, 2, 3, 1)
  return array


def _to_torch(leaf: str, array: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  if leaf == "temperature":
    return array.reshape(-1, 1, 1)
  if leaf == "prompt_param":
    return array.transpose(0, 3, 1, 2)[None]
  return array


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _strip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drop the Lightning prefix (if every key has it) and the unused convs."""
  keys = list(state_dict)
  if keys and all(k.startswith(LIGHTNING_PREFIX) for k in keys):
    state_dict = {k[len(LIGHTNING_PREFIX):]: v for k, v in state_dict.items()}
  return {k: v for k, v in state_dict.items() if k.split(".")[0] not in UNUSED}


def params_from_torch(state_dict: Mapping[str, Any], model: models.PromptIR | None = None):
  """Returns (params, masks) for `model` (default: MIR-L's PromptIR).

  Masks mark the non-zero entries of prunable tensors: the surviving weights
  of a pruned ticket. Missing or unexpected keys and shape mismatches raise
  one ValueError that lists all of them.
  """
  state_dict = _strip(state_dict)
  shapes = models.param_shapes(model or models.PromptIR())
  flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  names = [torch_name(tuple(masks_lib.path_name(p).split("/"))) for p, _ in flat]
  missing = [n for n in names if n not in state_dict]
  unexpected = sorted(set(state_dict) - set(names))
  leaves, wrong = [], []
  for (path, shape), name in zip(flat, names):
    if name in missing:
      continue
    array = _to_flax(masks_lib.path_name(path).rsplit("/", 1)[-1], _as_numpy(state_dict[name]))
    if array.shape != shape.shape:
      wrong.append(f"{name}: got {tuple(np.shape(state_dict[name]))}, expected the "
                   f"PyTorch shape of Flax {shape.shape}")
    leaves.append(array)
  if missing or unexpected or wrong:
    lines = ["The state_dict does not match PromptIR:"]
    lines += [f"  missing key: {n}" for n in missing]
    lines += [f"  unexpected key: {n}" for n in unexpected]
    lines += [f"  shape mismatch: {w}" for w in wrong]
    raise ValueError("\n".join(lines))
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  return params, masks_lib.masks_from_params(params)


def params_to_torch(params: Any) -> dict[str, np.ndarray]:
  """The PyTorch state_dict (plain PromptIR names, numpy arrays) of `params`."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    parts = tuple(masks_lib.path_name(path).split("/"))
    out[torch_name(parts)] = np.ascontiguousarray(_to_torch(parts[-1], np.asarray(leaf)))
  return out


def load_state_dict(path: str) -> dict[str, Any]:
  """Reads `.ckpt` / `.pth` / `.pt` (needs torch) or `.npz` state-dict files.

  In `.npz` files keys may carry a `state_dict/` prefix (the reference
  fixture's form); other arrays in the file are ignored.
  """
  if not os.path.isfile(path):
    raise ValueError(f"Checkpoint file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    with np.load(path) as data:
      prefixed = [k for k in data.files if k.startswith("state_dict/")]
      if prefixed:
        return {k[len("state_dict/"):]: data[k] for k in prefixed}
      return {k: data[k] for k in data.files}
  if ext in (".ckpt", ".pth", ".pt"):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError(
          f"Reading {path} needs PyTorch: pip install 'mirl_jax[torch]' "
          "(or pip install torch).") from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
      raise ValueError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
      obj = obj["state_dict"]  # Lightning checkpoint
    if not isinstance(obj, Mapping):
      raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state_dict "
                       "(a mapping of names to tensors) or a Lightning checkpoint")
    return dict(obj)
  raise ValueError(f"Unknown checkpoint format {ext!r} for {path}: "
                   "expected .ckpt, .pth, .pt or .npz")


def import_checkpoint(path: str, workdir: str, model: models.PromptIR) -> dict:
  """Converts `path` into ticket 0 of an empty `workdir`; returns its counts."""
  existing = checkpointing.ticket_indices(workdir)
  if existing:
    raise ValueError(f"{workdir} already holds tickets {existing}; import into an "
                     "empty workdir so that nothing saved is overwritten")
  params, masks = params_from_torch(load_state_dict(path), model)
  counts = masks_lib.count(params, masks)
  checkpointing.save_ticket(workdir, 0, params, masks, meta=dict(
      imported_from=os.path.abspath(path), **counts))
  return counts
