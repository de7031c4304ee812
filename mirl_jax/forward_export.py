"""A ticket's forward out of Python: a StableHLO artifact (`jax.export`) and an ONNX model.

Both freeze the ticket's params into the graph as constants, so the file alone restores images.
They trace the network without remat or scans (`scan_blocks=False, remat="none"`): the same
params and arithmetic, one op per layer, which is what a runtime outside JAX runs best and all
an ONNX converter can express.

StableHLO keeps batch, height and width symbolic ("b, 8*h, 8*w, 3": the network halves its
features three times) and is lowered for CPU, CUDA and TPU at once; it keeps the forms XLA
runs fastest. ONNX gets each depthwise conv as one grouped `Conv` (`layers.portable_forms`),
what onnxruntime runs fastest, and one fixed tile
shape (1, T, T, 3): jax2onnx refuses symbolic sizes here (the shape checks and the prompts'
bilinear resize need them concrete), so clients cut images into tiles, as `--mode restore`
does.
"""

import contextlib
import io
import logging

import jax
import jax.numpy as jnp
import numpy as np

from mirl_jax import layers
from mirl_jax import masks as masks_lib
from mirl_jax.restore import MULTIPLE

#: The input the StableHLO artifact accepts: NHWC float32 in [0, 1], sides multiples of 8.
STABLEHLO_SHAPE = "b, 8*h, 8*w, 3"
#: Platforms the StableHLO artifact is lowered for (`Exported.call` picks the one it runs on).
STABLEHLO_PLATFORMS = ("cpu", "cuda", "tpu")


def frozen_forward(model, params, ticket_masks=None):
  """x (B, H, W, 3) -> the restored x, with the ticket's (masked) params as constants."""
  if ticket_masks is not None:
    params = masks_lib.apply_masks(params, ticket_masks)
  params = jax.tree.map(lambda p: np.asarray(p, np.float32), params)
  flat = model.clone(scan_blocks=False, remat="none")
  return lambda x: flat.apply({"params": params}, x)


def stablehlo(model, params, ticket_masks=None) -> bytes:
  """The serialized `jax.export.Exported` of the forward; `jax.export.deserialize` reads it."""
  shape = jax.export.symbolic_shape(STABLEHLO_SHAPE)
  exported = jax.export.export(
      jax.jit(frozen_forward(model, params, ticket_masks)), platforms=STABLEHLO_PLATFORMS
  )(jax.ShapeDtypeStruct(shape, jnp.float32))
  return exported.serialize()


def onnx_converter():
  try:
    from jax2onnx import to_onnx  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(
        "export.format='onnx' needs jax2onnx and onnx: pip install -e '.[export]'"
    ) from None
  return to_onnx


@contextlib.contextmanager
def _quiet():
  """jax2onnx prints a DEBUG line per layer and logs a warning per unusual op: both go."""
  level = logging.root.manager.disable
  logging.disable(logging.WARNING)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logging.disable(level)


def check_tile(tile: int) -> None:
  if tile < MULTIPLE or tile % MULTIPLE:
    raise ValueError(f"export.tile={tile}: expected a multiple of {MULTIPLE}, at least {MULTIPLE}")


def onnx_model(model, params, tile: int | tuple[int, int], ticket_masks=None):
  """The forward of one (1, H, W, 3) float32 NHWC tile as an `onnx.ModelProto`; `tile` is
  the side (H = W) or (H, W)."""
  height, width = (tile, tile) if isinstance(tile, int) else tile
  check_tile(height)
  check_tile(width)
  to_onnx = onnx_converter()
  with _quiet(), layers.portable_forms():
    proto = to_onnx(
        frozen_forward(model, params, ticket_masks), [(1, height, width, 3)], model_name="mirl_jax"
    )
  proto.doc_string = (
      f"mirl_jax PromptIR ticket: input float32 NHWC (1, {height}, {width}, 3) in [0, 1], "
      "output the restored tile (clip to [0, 1])"
  )
  return proto
