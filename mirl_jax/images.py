"""Image files in and out: every reader of the project goes through here.

`read_rgb` turns any file Pillow can open into RGB uint8 so that later stages see one layout.
Alpha is dropped (not composited), as the reference loader's `Image.convert('RGB')` does; 16-bit
grey images are rescaled (x * 255 / 65535, rounded), not clipped (16-bit RGB PNGs are reduced to
8 bits by Pillow itself, which keeps the high byte). `read_encoded_rgb` / `decode_rgb` are the
storage pair used by the dataset builders. `write_png` is atomic: a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')

_HIGH_DEPTH_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_ORIENTATION = 0x0112  # EXIF tag.


class ImageReadError(ValueError):
  """A file that should be an image is missing, unreadable or truncated."""


def _to_rgb(image: Image.Image) -> np.ndarray:
  """Converts a loaded Pillow image of any common mode to an (H, W, 3) uint8 array."""
  if image.mode in _HIGH_DEPTH_MODES:
    # 16-bit PNG/TIFF; Pillow's own convert('L') would clip at 255 instead of rescaling.
    wide = np.asarray(image).astype(np.float64)
    gray = np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode == 'F':
    # Float images are taken to be in [0, 1].
    gray = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode != 'RGB':
    image = image.convert('RGB')  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1 ...
  return np.asarray(image, dtype=np.uint8)


def _decode(path: Path, data: bytes) -> tuple[np.ndarray, bool]:
  """RGB pixels of `data`, and whether `data` itself already decodes to exactly those pixels."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # Decodes now, so truncated files fail here rather than later.
      plain = (image.format == 'JPEG' and image.mode == 'RGB'
               and image.getexif().get(_ORIENTATION, 1) == 1)
      return _to_rgb(ImageOps.exif_transpose(image)), plain
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise ImageReadError(
        f'{path}: cannot read as an image (expected a complete image file in one of '
        f'{", ".join(IMAGE_EXTENSIONS)} or another format Pillow reads): {error}'
    ) from error


def _read_bytes(path: Path) -> bytes:
  if not path.is_file():
    raise ImageReadError(f'{path}: no such image file (expected a readable image file).')
  return path.read_bytes()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB with its EXIF orientation applied."""
  path = Path(path)
  return _decode(path, _read_bytes(path))[0]


def read_encoded_rgb(path: str | os.PathLike) -> tuple[bytes, tuple[int, int]]:
  """Bytes that Pillow decodes to exactly `read_rgb(path)`, and the image's (H, W).

  Plain RGB JPEG files are kept as they are (small, and quick to decode). Anything else (PNG,
  BMP, grey, palette, alpha, 16-bit, CMYK, rotated) is stored as uncompressed binary PPM:
  Pillow decodes it some 15x faster than PNG, which is what bounds training throughput.
  """
  path = Path(path)
  data = _read_bytes(path)
  pixels, plain = _decode(path, data)
  return (data if plain else encode_ppm(pixels)), pixels.shape[:2]


def _as_uint8(array: np.ndarray) -> np.ndarray:
  """Accepts uint8 as is and floats in [0, 1] (clipped, rounded); shape (H, W) or (H, W, C)."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise ValueError(f'expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}')
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.floating):
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
  raise ValueError(f'expected a uint8 or float [0, 1] image, got dtype {array.dtype}')


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
  """PNG bytes of a uint8 or float-[0, 1] image; level 1 because build speed beats file size."""
  buffer = io.BytesIO()
  Image.fromarray(_as_uint8(array)).save(buffer, format='PNG', compress_level=compress_level)
  return buffer.getvalue()


def encode_ppm(array: np.ndarray) -> bytes:
  """Uncompressed binary PPM (P6) bytes of an RGB uint8 image: fastest for Pillow to decode."""
  array = _as_uint8(array)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f'expected an RGB image of shape (H, W, 3), got {array.shape}')
  h, w = array.shape[:2]
  return b'P6\n%d %d\n255\n' % (w, h) + np.ascontiguousarray(array).tobytes()


_PPM_HEADER = re.compile(rb'P6\s+(\d+)\s+(\d+)\s+255\s')


def decode_rgb(data: bytes) -> np.ndarray:
  """(H, W, 3) uint8 pixels of bytes from read_encoded_rgb.

  Binary PPM comes back as a read-only zero-copy view (a training patch then costs no copy of
  the whole image); anything else goes through Pillow.
  """
  header = _PPM_HEADER.match(data[:64])
  if header:
    w, h = int(header.group(1)), int(header.group(2))
    return np.frombuffer(data, np.uint8, count=h * w * 3, offset=header.end()).reshape(h, w, 3)
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return _to_rgb(image)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes a file atomically: a temporary file in the same folder, then os.replace.

  A run killed mid-write leaves the old file (or none), never half of one.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # The temporary name does not end in an image extension, so listings never pick it up.
  handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(handle, 'wb') as file:
      file.write(data)
    os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes it private; outputs are not
    os.replace(temp_name, path)
  except BaseException:
    Path(temp_name).unlink(missing_ok=True)
    raise


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
  write_atomic(path, encode_png(array, compress_level=6))


def list_images(folder: str | os.PathLike) -> list[Path]:
  """Image files directly inside `folder` (by extension, case-insensitive), sorted by name."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'{folder}: expected a folder of images, found none.')
  return sorted(
      p for p in folder.iterdir()
      if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in IMAGE_EXTENSIONS
  )
