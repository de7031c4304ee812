"""A ticket as the web page loads it: the ONNX graph, and its weights stored sparsely.

ONNX keeps a pruned model's zeros densely, so a ticket with 10% of its weights would download
as much as the dense network. The bundle instead splits the model: `graph.onnx` holds the ops
and small tensors and names an external file `weights.data` for every large float32 weight;
that file is never shipped. `weights.values` holds its non-zero float32 words and
`weights.mask` one bit per word (which words are non-zero); the page rebuilds `weights.data`
in memory and hands it to onnxruntime-web as external data when it creates the session. A
ticket with 10% of all its parameters then costs about 4 bytes x 10% + 1/8 byte per weight:
13% of the dense model. Where the mask would cost more than the zeros it spares (a dense
network), there is no mask and `weights.values` is the whole file.

`manifest.json` says which file is which, the tile the graph takes, and the sizes.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mirl_jax import checkpointing
from mirl_jax import forward_export
from mirl_jax import masks as masks_lib

FORMAT = "mirl_jax-web/1"
GRAPH, DATA, MASK, VALUES, MANIFEST = (
    "graph.onnx",
    "weights.data",
    "weights.mask",
    "weights.values",
    "manifest.json",
)
#: Float32 tensors of at least this many elements go to the sparse weights; the rest (biases,
#: norms, shape constants) stay in the graph, where they cost little.
MIN_EXTERNAL = 256


def externalize(proto, location: str = DATA) -> np.ndarray:
  """Moves the large float32 initializers of `proto` into one external file named
  `location`, back to back (4-byte aligned); returns that file's contents as float32."""
  from onnx import TensorProto, external_data_helper, numpy_helper  # pylint: disable=import-outside-toplevel

  chunks, offset = [], 0
  for tensor in proto.graph.initializer:
    if tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims) < MIN_EXTERNAL:
      continue
    raw = numpy_helper.to_array(tensor).astype("<f4").tobytes()
    tensor.ClearField("float_data")
    tensor.raw_data = raw  # what set_external_data checks for; then dropped
    external_data_helper.set_external_data(tensor, location, offset=offset, length=len(raw))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    chunks.append(raw)
    offset += len(raw)
  return np.frombuffer(b"".join(chunks), "<f4")


def encode(words: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
  """(mask bits or None, survivors) of float32 `words`; a word is kept unless all its bits
  are 0 (so -0.0 survives, and decoding is exact)."""
  alive = words.view("<u4") != 0
  values = words[alive]
  if 4 * (words.size - values.size) <= (words.size + 7) // 8:  # the mask would cost more
    return None, words
  return np.packbits(alive, bitorder="little"), values


def decode(mask: np.ndarray | None, values: np.ndarray, size: int) -> np.ndarray:
  """The page's expansion, in numpy: the dense float32 words again."""
  if mask is None:
    return values
  alive = np.unpackbits(mask, count=size, bitorder="little").astype(bool)
  dense = np.zeros(size, "<f4")
  dense[alive] = values
  return dense


def write_bundle(
    model,
    params,
    folder,
    tile: int = 256,
    overlap: int = 32,
    ticket: int = 0,
    ticket_masks=None,
    info: dict | None = None,
) -> Path:
  """Writes the bundle of ticket `params` into `folder` (replaced whole, atomically)."""
  import onnx  # pylint: disable=import-outside-toplevel

  proto = forward_export.onnx_model(model, params, tile, ticket_masks)
  dense_bytes = proto.ByteSize()
  words = externalize(proto)
  mask, values = encode(words)
  folder = Path(folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
  try:
    del proto.graph.value_info[:]  # intermediate shapes: a third of the graph, unused by ORT
    onnx.save_model(proto, tmp / GRAPH)
    values.astype("<f4").tofile(tmp / VALUES)
    if mask is not None:
      mask.tofile(tmp / MASK)
    sizes = {
        name: (tmp / name).stat().st_size for name in (GRAPH, VALUES, MASK) if (tmp / name).exists()
    }
    manifest = {
        "format": FORMAT,
        "ticket": ticket,
        "tile": tile,
        "overlap": overlap,
        "multiple": forward_export.MULTIPLE,
        "layout": "NHWC",
        "input_shape": [1, tile, tile, 3],
        "graph": GRAPH,
        "external_data": DATA,
        "mask": MASK if mask is not None else None,
        "values": VALUES,
        "floats": int(words.size),
        "survivors": int(values.size),
        "bytes": {**sizes, "download": sum(sizes.values()), "dense_onnx": dense_bytes},
        **(info or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if folder.exists():
      shutil.rmtree(folder)
    os.replace(tmp, folder)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return folder


def read_manifest(folder) -> dict:
  path = Path(folder) / MANIFEST
  manifest = json.loads(path.read_text())
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  return manifest


def load_dense(folder) -> tuple[bytes, np.ndarray]:
  """(graph bytes, dense weights.data words) of a bundle: what the page builds."""
  folder = Path(folder)
  manifest = read_manifest(folder)
  values = np.fromfile(folder / manifest["values"], "<f4")
  mask = np.fromfile(folder / manifest["mask"], np.uint8) if manifest["mask"] else None
  return (folder / manifest["graph"]).read_bytes(), decode(mask, values, manifest["floats"])


def ticket_bundle(workdir: str, model, index: int | None, tile: int) -> Path:
  """WORKDIR/web/ticket_K_tile_T for ticket `index` (default the latest), written if absent."""
  indices = checkpointing.ticket_indices(workdir)
  index = max(indices) if index is None and indices else index
  folder = Path(workdir) / "web" / f"ticket_{index}_tile_{tile}"
  if (folder / MANIFEST).exists():
    return folder
  forward_export.onnx_converter()  # jax2onnx is there, before the ticket is read
  params, ticket_masks, _ = checkpointing.restore_ticket(workdir, index, model=model)
  counts = masks_lib.count(params, ticket_masks)
  print(f"Exporting ticket {index} of {workdir} for the web page (tile {tile})...")
  write_bundle(
      model,
      params,
      folder,
      tile=tile,
      ticket=index,
      ticket_masks=ticket_masks,
      info={"params": counts["params"], "nonzero": counts["nonzero"]},
  )
  sizes = read_manifest(folder)["bytes"]
  print(
      f"{folder}: {sizes['download'] / 2**20:.2f} MiB to download, "
      f"{100 * sizes['download'] / sizes['dense_onnx']:.1f}% of the dense ONNX model "
      f"({sizes['dense_onnx'] / 2**20:.2f} MiB); {counts['nonzero']:,} of "
      f"{counts['params']:,} parameters non-zero"
  )
  return folder
