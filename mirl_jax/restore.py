"""Restores a user's own image files with a ticket.

Images of any size go through the network padded (reflect) to a multiple of 8
and cropped back. Images larger than a tile are cut into overlapping tiles
of one fixed shape (one compilation), blended with a feathered window, so a
4000x3000 photo needs the memory of a tile, not of the photo.
"""

import functools
import os
from pathlib import Path
from typing import Callable, Iterable

import jax
import numpy as np
from tqdm import tqdm

from mirl_jax import images

MULTIPLE = 8


def _pad_to_multiple(image: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
  h, w = image.shape[:2]
  ph, pw = -h % multiple, -w % multiple
  mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
  return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
  """Tile origins covering [0, length) with the last tile flush to the end."""
  if length <= tile:
    return [0]
  stride = tile - overlap
  starts = list(range(0, length - tile, stride))
  return starts + [length - tile]


def _window(size: int, overlap: int) -> np.ndarray:
  """1 in the middle, ramping to ~0 over `overlap` pixels at each edge."""
  w = np.ones(size, np.float32)
  if overlap > 0 and size > 2 * overlap:
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    w[:overlap], w[-overlap:] = ramp, ramp[::-1]
  return w


def restore_array(forward: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                  tile: int = 512, overlap: int = 32) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1] -> restored (H, W, 3) float32 in [0, 1]."""
  if tile % MULTIPLE or overlap % MULTIPLE or not 0 <= overlap < tile // 2:
    raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of "
                     f"{MULTIPLE} with 0 <= overlap < tile / 2")
  h, w = image.shape[:2]
  padded = _pad_to_multiple(image)
  ph, pw = padded.shape[:2]
  th, tw = min(tile, ph), min(tile, pw)
  out = np.zeros(padded.shape, np.float32)
  weight = np.zeros((ph, pw, 1), np.float32)
  for y in _starts(ph, th, overlap):
    for x in _starts(pw, tw, overlap):
      restored = np.asarray(forward(padded[None, y:y + th, x:x + tw]))[0]
      win = (_window(th, overlap if th < ph else 0)[:, None] *
             _window(tw, overlap if tw < pw else 0)[None, :])[..., None]
      out[y:y + th, x:x + tw] += restored * win
      weight[y:y + th, x:x + tw] += win
  return np.clip(out / weight, 0.0, 1.0)[:h, :w]


def collect_inputs(inputs: Iterable[str]) -> list[Path]:
  """Expands folders to their image files; every named path must exist."""
  files = []
  for item in inputs:
    path = Path(item).expanduser()
    if path.is_dir():
      found = images.list_images(path)
      if not found:
        raise ValueError(f"No image files ({', '.join(images.IMAGE_EXTENSIONS)}) "
                         f"in the folder {path}")
      files.extend(found)
    elif path.is_file():
      files.append(path)
    else:
      raise ValueError(f"Input not found: {path} (expected an image file or a folder)")
  if not files:
    raise ValueError("No inputs given: set config.restore.inputs=PATH[,PATH...]")
  return files


@functools.lru_cache(maxsize=8)
def _jitted_apply(model):
  """One compiled forward per model (and input shape), shared by every ticket."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


def make_forward(model, params) -> Callable[[np.ndarray], np.ndarray]:
  params = jax.device_put(params)
  apply = _jitted_apply(model)
  return lambda x: apply(params, x)


def restore_files(forward, inputs: Iterable[str], output_dir: str,
                  tile: int = 512, overlap: int = 32) -> list[Path]:
  """Writes OUTPUT_DIR/<name>.png for each input; returns the written paths.

  Every input is read before any output is written, so an unreadable file
  stops the run before it has produced anything.
  """
  files = collect_inputs(inputs)
  for f in files:  # fail early: a clear error names the bad file
    images.read_rgb(f)
  names = [f.stem for f in files]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"Several inputs share the name(s) {duplicates}; their outputs "
                     "would overwrite each other: restore them into separate folders")
  os.makedirs(output_dir, exist_ok=True)
  written = []
  for f in tqdm(files, desc="restore", unit="image"):
    image = images.read_rgb(f).astype(np.float32) / 255.0
    restored = restore_array(forward, image, tile=tile, overlap=overlap)
    target = Path(output_dir) / f"{f.stem}.png"
    images.write_png(target, restored)
    written.append(target)
  return written
