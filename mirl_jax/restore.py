"""Restores a user's own image files with a ticket.

Two steps, so that the command line checks everything before it loads a network:
`plan_outputs` reads every input and decides every output file, refusing (ValueError, one line
with the fix) whatever could overwrite a user's file or lose what an image holds, and creates
nothing; `restore_files` then does the work, writing each output atomically. Outputs keep the
input's nature (grey, alpha, 16 bits, JPEG/WebP/PNG): see mirl_jax.images.

Images of any size go through the network padded (reflect) to a multiple of 8
and cropped back. Images larger than a tile are cut into overlapping tiles
of one fixed shape (one compilation), blended with a feathered window, so a
4000x3000 photo needs the memory of a tile, not of the photo.
"""

import collections
import functools
import os
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from mirl_jax import images, models, train_step

MULTIPLE = 8


def _pad_to_multiple(image: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
  h, w = image.shape[:2]
  ph, pw = -h % multiple, -w % multiple
  mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
  return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def input_shape(size: tuple[int, int], tile: int) -> tuple[int, int, int, int]:
  """The network's input shape for an image of `size` (height, width): padded, at most a tile."""
  h, w = (n + -n % MULTIPLE for n in size)
  return (1, min(tile, h), min(tile, w), 3)


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


def check_tiling(tile: int, overlap: int) -> None:
  if tile % MULTIPLE or overlap % MULTIPLE or not 0 <= overlap < tile // 2:
    raise ValueError(
        f"tile ({tile}) and overlap ({overlap}) must be multiples of "
        f"{MULTIPLE} with 0 <= overlap < tile / 2"
    )


def restore_array(
    forward: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile: int = 512,
    overlap: int = 32,
    progress: bool = False,
    desc: str = "tiles",
) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1] -> restored (H, W, 3) float32 in [0, 1].

  With `progress`, an image of several tiles gets a tqdm bar (on stderr) over its tiles: a large
  photo on a CPU takes minutes, and the bar's estimate says how many.
  """
  check_tiling(tile, overlap)
  h, w = image.shape[:2]
  padded = _pad_to_multiple(image)
  ph, pw = padded.shape[:2]
  _, th, tw, _ = input_shape((h, w), tile)
  out = np.zeros(padded.shape, np.float32)
  weight = np.zeros((ph, pw, 1), np.float32)
  origins = [(y, x) for y in _starts(ph, th, overlap) for x in _starts(pw, tw, overlap)]
  win = (
      _window(th, overlap if th < ph else 0)[:, None]
      * _window(tw, overlap if tw < pw else 0)[None, :]
  )[..., None]
  with tqdm(
      total=len(origins),
      desc=desc,
      unit="tile",
      leave=False,
      disable=not progress or len(origins) < 2,
  ) as bar:
    for y, x in origins:
      restored = np.asarray(forward(padded[None, y : y + th, x : x + tw]))[0]
      out[y : y + th, x : x + tw] += restored * win
      weight[y : y + th, x : x + tw] += win
      bar.update()
  return np.clip(out / weight, 0.0, 1.0)[:h, :w]


def collect_inputs(inputs: Iterable[str]) -> list[Path]:
  """Expands folders to their image files; every named path must exist."""
  files = []
  for item in inputs:
    path = Path(item).expanduser()
    if path.is_dir():
      found = images.list_images(path)
      if not found:
        raise ValueError(
            f"No image files ({', '.join(images.IMAGE_EXTENSIONS)}) in the folder {path}"
        )
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


def compile_forward(model, shapes: Iterable[tuple[int, ...]]) -> None:
  """Compiles the forward for each input shape from the params' shapes alone.

  Run before the params are read, the compiler's heap is handed back before they
  take their memory, so the two never add up in the peak RSS: for small images
  (the 128x128 forward of the default network) the compiler's is the larger part.
  make_forward's calls then reuse these executables.
  """
  apply, abstract = _jitted_apply(model), models.param_shapes(model)
  for shape in dict.fromkeys(shapes):
    apply.lower(abstract, jax.ShapeDtypeStruct(shape, np.float32)).compile()
  train_step.release_freed_memory()


def make_forward(model, params) -> Callable[[np.ndarray], np.ndarray]:
  params = jax.device_put(params)
  train_step.release_freed_memory()  # the host copies that device_put did not keep
  apply = _jitted_apply(model)
  shapes = set()

  def forward(x):
    out = apply(params, x)
    if x.shape not in shapes:  # compiled just now: return the compiler's heap to the OS
      shapes.add(x.shape)
      train_step.release_freed_memory()
    return out

  return forward


class Job(NamedTuple):
  """One planned restoration: read `source` (`size`: upright height, width), write `target` as
  `format` ('PNG', 'JPEG', 'WEBP')."""

  source: Path
  target: Path
  format: str
  size: tuple[int, int]


def _unique(files: list[Path]) -> list[Path]:
  """Drops repeats of one file (named twice, or as a file and in its folder): one output each."""
  seen, unique = set(), []
  for file in files:
    if file.resolve() not in seen:
      seen.add(file.resolve())
      unique.append(file)
  return unique


def _same_path(a: Path, b: Path) -> bool:
  """Whether two paths name one file or folder (symlinks, `./x` and `x`, hard links)."""
  try:
    return os.path.samefile(a, b)
  except OSError:  # one of them does not exist (yet)
    return a.resolve() == b.resolve()


def _file_id(path: Path) -> tuple[int, int]:
  stat = path.stat()
  return stat.st_dev, stat.st_ino


def _check_output_dir(inputs: list[str], files: list[Path], out: Path) -> None:
  """Refuses an output folder that is, or holds, an input: outputs would land on the originals."""
  fix = "choose another --config.restore.output_dir"
  if out.exists() and not out.is_dir():
    raise ValueError(
        f"Output folder {out} is a file (expected a folder, or a path that does "
        f"not exist yet): {fix}"
    )
  for item in inputs:
    folder = Path(item).expanduser()
    if folder.is_dir() and _same_path(folder, out):
      raise ValueError(
          f"Output folder {out} is the input folder {folder} (expected a folder "
          f"apart from the inputs, so that no original is overwritten): {fix}"
      )
  for file in files:  # the file's own folder, or the real one behind a symlink
    if _same_path(file.parent, out) or _same_path(file.resolve().parent, out):
      raise ValueError(
          f"Output folder {out} holds the input file {file} (expected a folder "
          f"apart from the inputs, so that no original is overwritten): {fix}"
      )


def _check_targets(jobs: list[Job], overwrite: bool) -> None:
  """Refuses outputs that clash with each other, land on an input, or (unless asked) exist."""
  names = collections.Counter(job.target.name.casefold() for job in jobs)
  clashes = sorted({job.target.name for job in jobs if names[job.target.name.casefold()] > 1})
  if clashes:
    raise ValueError(
        f"Several inputs share the output name(s) {clashes} (expected one input "
        "per output file, or they would overwrite each other): restore them into "
        "separate folders"
    )
  sources = {_file_id(job.source): job.source for job in jobs}
  existing = [job.target for job in jobs if os.path.lexists(job.target)]
  for target in existing:
    if target.is_dir():
      raise ValueError(
          f"Output {target} is a folder (expected a file or nothing there): "
          "move it away or choose another --config.restore.output_dir"
      )
    if target.exists() and _file_id(target) in sources:
      raise ValueError(
          f"Output {target} is the input file {sources[_file_id(target)]} "
          "(expected outputs apart from the inputs, even with overwrite): choose "
          "another --config.restore.output_dir"
      )
  if existing and not overwrite:
    named = ", ".join(str(p) for p in existing[:3])
    more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
    raise ValueError(
        f"Output file(s) already exist: {named}{more} (expected none, so that "
        "nothing is overwritten): choose another --config.restore.output_dir, or "
        "set --config.restore.overwrite=True to replace them"
    )


def plan_outputs(
    inputs: Iterable[str], output_dir: str, *, fmt: str = "same", overwrite: bool = False
) -> list[Job]:
  """Checks every input and decides every output, creating nothing on disk.

  Each input is decoded once, so an unreadable file, or one the chosen format cannot hold,
  stops the run before the network is loaded, let alone anything written. `fmt`: 'same',
  'png' or 'jpg' (see mirl_jax.images). Raises ValueError, naming the path and the fix, for
  an output folder that is or holds an input; two inputs with one output name; an output that
  exists (unless `overwrite`) or is an input file (always); an image the format cannot hold
  (jpg with alpha or 16 bits); an unknown `fmt`.
  """
  if fmt not in images.OUTPUT_FORMATS:
    raise ValueError(
        f"Output format {fmt!r} unknown (expected one of "
        f"{', '.join(images.OUTPUT_FORMATS)}): set --config.restore.format=same"
    )
  inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
  files = _unique(collect_inputs(inputs))
  out = Path(output_dir).expanduser()
  _check_output_dir(inputs, files, out)
  jobs = []
  for file in files:
    picture = images.read_picture(file)
    kind = images.output_format(picture.format, fmt)
    reason = images.unfit(picture, kind)
    if reason:
      raise ValueError(
          f"{file}: has {reason}, which {kind} cannot hold (expected an output "
          "format that keeps it): set --config.restore.format=png"
      )
    target = out / f"{file.stem}{images.EXTENSIONS[kind]}"
    jobs.append(Job(file, target, kind, picture.rgb.shape[:2]))
  _check_targets(jobs, overwrite)
  return jobs


def restore_files(
    forward: Callable[[np.ndarray], np.ndarray],
    jobs: Iterable[Job],
    *,
    tile: int = 512,
    overlap: int = 32,
    progress: bool = True,
) -> list[Path]:
  """Restores each planned job (see plan_outputs); returns the written paths.

  The output folder is created only now, and each output is written atomically, so a run cut
  short leaves whole files or none. `progress`: tqdm bars on stderr over images and tiles.
  """
  check_tiling(tile, overlap)
  jobs = list(jobs)
  for folder in dict.fromkeys(job.target.parent for job in jobs):
    folder.mkdir(parents=True, exist_ok=True)
  written = []
  for job in tqdm(jobs, desc="restore", unit="image", disable=not progress):
    picture = images.read_picture(job.source)
    restored = restore_array(
        forward, picture.rgb, tile=tile, overlap=overlap, progress=progress, desc=job.source.name
    )
    images.write_atomic(job.target, images.encode_picture(restored, picture, job.format))
    written.append(job.target)
  return written
