"""Tickets out of the workdir: the reference's state dict, or the forward as a graph.

`torch` and `npz` write the reference's full state dict. The reference loads
weights with a strict `load_state_dict`, so an export holds every tensor it
defines: the ticket's params under their PyTorch names (see
`convert.torch_name`) and the six convs its forward never uses. Those come from
the workdir when it stored them (an imported file, or a run with
lottery.reference_pool), else at their init values from the run's key.
`stablehlo` and `onnx` write the ticket's forward with its weights inside, for
runtimes without our code (see `forward_export`).
"""

import os
import tempfile

import jax
import numpy as np

from mirl_jax import checkpointing
from mirl_jax import convert
from mirl_jax import forward_export
from mirl_jax import models

#: File name endings per format (the state dicts': those `--mode import` reads back).
FORMATS = {
    "torch": (".pth", ".pt", ".ckpt"),
    "npz": (".npz",),
    "stablehlo": (".stablehlo", ".bin"),
    "onnx": (".onnx",),
}


def check_output(path: str, fmt: str, overwrite: bool) -> None:
  """Refuses, before anything is read, an output that cannot or may not be written."""
  folder = os.path.dirname(os.path.abspath(path))
  if not path.lower().endswith(FORMATS[fmt]):
    raise ValueError(
        f"export.output={path}: expected a name ending in "
        f"{' or '.join(FORMATS[fmt])} for export.format={fmt!r}"
    )
  if os.path.isdir(path):
    raise ValueError(f"export.output={path} is a folder: expected a file name")
  if not os.path.isdir(folder):
    raise ValueError(f"export.output={path}: its folder {folder} does not exist")
  if os.path.exists(path) and not overwrite:
    raise ValueError(
        f"export.output={path} exists: choose another file or set --config.export.overwrite=True"
    )


def unused_convs(workdir: str, index: int, model, meta: dict, seed: int) -> dict:
  """The six unused convs as of ticket `index` (see the module docstring)."""
  stored = checkpointing.restore_unused(workdir, index)
  if stored is not None:
    return stored[0]
  theta_0 = checkpointing.restore_theta_0(workdir, model)
  if theta_0 is not None and theta_0[1] is not None:
    return theta_0[1]
  key = (
      jax.random.wrap_key_data(np.asarray(meta["init_key"], np.uint32))
      if "init_key" in meta
      else jax.random.key(seed)
  )
  return convert.unused_init(model, key)


def state_dict(params, unused) -> dict[str, np.ndarray]:
  """The reference's state dict of PromptIR(decoder=True): params and unused convs."""
  out = convert.params_to_torch(params)
  out.update(convert.params_to_torch(unused))
  return out


def _write_torch(tensors: dict[str, np.ndarray], path: str, lightning: bool) -> None:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("export.format='torch' needs PyTorch: pip install 'mirl_jax[torch]'") from None
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
  if lightning:  # what Trainer.save_checkpoint writes, the weights part of it
    obj = {
        "state_dict": {convert.LIGHTNING_PREFIX + k: v for k, v in sd.items()},
        "pytorch-lightning_version": _lightning_version(),
        "epoch": 0,
        "global_step": 0,
    }
  else:
    obj = sd
  torch.save(obj, path)


def _lightning_version() -> str:
  try:
    import lightning  # pylint: disable=import-outside-toplevel

    return lightning.__version__
  except ImportError:
    return "2.0.0"


def write(payload, path: str, fmt: str, lightning: bool = False) -> None:
  """Writes `payload` to `path` atomically: a file beside it, renamed when complete.

  `payload`: the state dict's tensors (torch, npz), the serialized bytes (stablehlo) or the
  `onnx.ModelProto` (onnx).
  """
  if fmt not in FORMATS:
    raise ValueError(f"export.format={fmt!r}: expected one of {tuple(FORMATS)}")
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=folder)
  os.close(fd)
  try:
    if fmt == "npz":
      with open(tmp, "wb") as f:
        np.savez(f, **payload)
    elif fmt == "stablehlo":
      with open(tmp, "wb") as f:
        f.write(payload)
    elif fmt == "onnx":
      import onnx  # pylint: disable=import-outside-toplevel

      onnx.save_model(payload, tmp)
    else:
      _write_torch(payload, tmp, lightning)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's owner-only 0600
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def export_ticket(config, workdir: str) -> int:
  """--mode export: config.export's ticket of `workdir` to its file; returns the ticket's index."""
  cfg = config.export
  check_output(cfg.output, cfg.format, cfg.overwrite)  # before anything is read
  model = models.PromptIR(**config.model)
  index = None if cfg.ticket < 0 else cfg.ticket
  if cfg.format == "onnx":
    forward_export.onnx_converter()  # jax2onnx is there, before the ticket is read
  params, ticket_masks, meta = checkpointing.restore_ticket(workdir, index, model=model)
  index = max(checkpointing.ticket_indices(workdir)) if index is None else index
  if cfg.format == "stablehlo":
    payload = forward_export.stablehlo(model, params, ticket_masks)
  elif cfg.format == "onnx":
    payload = forward_export.onnx_model(model, params, cfg.tile, ticket_masks)
  else:
    payload = state_dict(params, unused_convs(workdir, index, model, meta, config.seed))
  write(payload, cfg.output, cfg.format, cfg.lightning)
  return index
