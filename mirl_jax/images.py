"""Image files in and out: every reader of the project goes through here.

`read_rgb` turns any file Pillow can open into RGB uint8 so that later stages see one layout.
Alpha is dropped (not composited), as the reference loader's `Image.convert('RGB')` does; 16-bit
grey images are rescaled (x * 255 / 65535, rounded), not clipped (16-bit RGB PNGs are reduced to
8 bits by Pillow itself, which keeps the high byte). `read_encoded_rgb` / `decode_rgb` are the
storage pair used by the dataset builders. `write_png` is atomic: a crash never leaves a
half-written file under the final name.

Restoring a user's file keeps the image as it came instead: `read_picture` gives the network RGB
in [0, 1] and remembers what the file was, and `encode_picture` writes the result back in kind:
- grey (L, 1-bit, I;16, grey+alpha) stays grey: the network sees it in three equal channels, and
  the three restored channels are averaged back to one;
- alpha (RGBA, LA, palette or colour with transparency) is copied bit for bit, never restored;
- 16 bits stay 16 bits (v / 65535 in, rounded back out). Pillow reduces 16-bit colour PNGs to 8
  bits, so 16-bit PNGs are read and written with pypng;
- the output format (`output_format`): 'png', 'jpg' (quality 95), or 'same': JPEG in, JPEG out
  (quality 95, the source's chroma subsampling), so that a folder of photos does not grow
  fourfold; WebP in, WebP out (lossless if the source was, else quality 95); anything else
  PNG. The file is named `<stem>.png`, `.jpg` or `.webp` (`EXTENSIONS`);
- the EXIF orientation is applied, and no metadata (EXIF, GPS, ICC profile, text) is carried
  over: outputs are written from the arrays alone;
- everything else (8-bit RGB, CMYK, YCbCr, palette without transparency) becomes 8-bit RGB.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import png  # pypng: Pillow cannot read or write 16-bit colour PNGs
from PIL import Image, ImageOps, JpegImagePlugin

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
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
  if image.mode == "F":
    # Float images are taken to be in [0, 1].
    gray = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode != "RGB":
    image = image.convert("RGB")  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1 ...
  return np.asarray(image, dtype=np.uint8)


def _decode(path: Path, data: bytes) -> tuple[np.ndarray, bool]:
  """RGB pixels of `data`, and whether `data` itself already decodes to exactly those pixels."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # Decodes now, so truncated files fail here rather than later.
      plain = (
          image.format == "JPEG"
          and image.mode == "RGB"
          and image.getexif().get(_ORIENTATION, 1) == 1
      )
      return _to_rgb(ImageOps.exif_transpose(image)), plain
  except _DECODE_ERRORS as error:
    raise _read_error(path, error) from error


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, png.Error)


def _read_error(path: Path, error: Exception) -> ImageReadError:
  return ImageReadError(
      f"{path}: cannot read as an image (expected a complete image file in one of "
      f'{", ".join(IMAGE_EXTENSIONS)} or another format Pillow reads): {error}'
  )


def _read_bytes(path: Path) -> bytes:
  if not path.is_file():
    raise ImageReadError(f"{path}: no such image file (expected a readable image file).")
  return path.read_bytes()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB with its EXIF orientation applied."""
  path = Path(path)
  return _decode(path, _read_bytes(path))[0]


def read_encoded_rgb(path: str | os.PathLike) -> tuple[bytes, tuple[int, int]]:
  """Bytes that Pillow decodes to exactly `read_rgb(path)`, and the image's (H, W).

  Plain RGB JPEG files are kept as they are (small, and quick to decode). Anything else (PNG,
  BMP, grey, palette, alpha, 16-bit, CMYK, rotated) is stored as uncompressed binary PPM:
  Pillow decodes it many times faster than PNG (no inflate), and decoding is what bounds
  training throughput (benchmarks/bench_pipeline.py).
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
    raise ValueError(
        f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}"
    )
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.floating):
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
  raise ValueError(f"expected a uint8 or float [0, 1] image, got dtype {array.dtype}")


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
  """PNG bytes of a uint8 or float-[0, 1] image; level 1 because build speed beats file size."""
  buffer = io.BytesIO()
  Image.fromarray(_as_uint8(array)).save(buffer, format="PNG", compress_level=compress_level)
  return buffer.getvalue()


def encode_ppm(array: np.ndarray) -> bytes:
  """Uncompressed binary PPM (P6) bytes of an RGB uint8 image: fastest for Pillow to decode."""
  array = _as_uint8(array)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f"expected an RGB image of shape (H, W, 3), got {array.shape}")
  h, w = array.shape[:2]
  return b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(array).tobytes()


_PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")


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
  handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as file:
      file.write(data)
    os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes it private; outputs are not
    os.replace(temp_name, path)
  except BaseException as e:
    Path(temp_name).unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise_naming(e, path)
    raise


def raise_naming(error: OSError, path: str | os.PathLike) -> None:
  """Raises `error` again naming `path` if it names no file (as a failed write() or flush()),
  so that a full disk's one-line error says which file it stopped; else returns."""
  if error.errno is not None and error.filename is None:
    raise OSError(error.errno, error.strerror, str(path)) from error


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
  write_atomic(path, encode_png(array, compress_level=6))


def list_images(folder: str | os.PathLike) -> list[Path]:
  """Image files directly inside `folder` (by extension, case-insensitive), sorted by name."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: expected a folder of images, found none.")
  return sorted(
      p
      for p in folder.iterdir()
      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
  )


# ----------------------------------------------------------------------------
# A user's file, kept in kind.

OUTPUT_FORMATS = ("same", "png", "jpg")
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
QUALITY = 95  # JPEG and lossy WebP outputs: close to the input, not four times its size

# EXIF orientation -> the array operation that turns the stored image upright (as exif_transpose).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


class Picture(NamedTuple):
  """An image as the network sees it, plus what it takes to write the result back in kind."""

  rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]; grey repeated in three channels
  alpha: np.ndarray | None  # (H, W) in the file's own dtype (uint8 or uint16), or None
  grey: bool
  bits: int  # 8 or 16 per channel
  format: str  # the source's format as Pillow names it: 'JPEG', 'PNG', 'WEBP', 'TIFF', ...
  lossless: bool = False  # a lossless WebP source
  subsampling: int = -1  # a JPEG source's chroma subsampling (Pillow's 0, 1, 2), else -1


def _is_png16(data: bytes) -> bool:
  """A PNG whose IHDR says 16 bits per sample."""
  return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[24] == 16


def _read_png16(data: bytes) -> tuple[np.ndarray, np.ndarray | None, bool]:
  """Values ((H, W) grey or (H, W, 3)), alpha and greyness of a 16-bit PNG, as uint16."""
  width, height, rows, info = png.Reader(bytes=data).read()
  planes, has_alpha = info["planes"], info["alpha"]
  pixels = np.vstack([np.frombuffer(row, np.uint16) for row in rows]).reshape(height, width, planes)
  values = pixels[..., : planes - has_alpha]
  alpha = pixels[..., -1] if has_alpha else None
  if "transparent" in info:  # a tRNS colour: those pixels are transparent, the others opaque
    clear = np.all(values == np.array(info["transparent"], np.uint16), axis=-1)
    alpha = np.where(clear, 0, 65535).astype(np.uint16)
  return (values[..., 0] if info["greyscale"] else values), alpha, info["greyscale"]


def _split(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
  """Values, alpha, greyness and bits of a loaded Pillow image (not a 16-bit PNG)."""
  if image.mode in _HIGH_DEPTH_MODES:  # 16-bit grey TIFF, or 32-bit integers
    return np.clip(np.asarray(image), 0, 65535).astype(np.uint16), None, True, 16
  if image.mode == "F":  # floats are taken to be in [0, 1]
    wide = np.clip(np.rint(np.asarray(image) * 65535.0), 0, 65535)
    return wide.astype(np.uint16), None, True, 16
  has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
  grey = image.mode in ("1", "L", "LA", "La")
  mode = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
  pixels = np.asarray(image if image.mode == mode else image.convert(mode))
  if not has_alpha:
    return pixels, None, grey, 8
  values = pixels[..., 0] if grey else pixels[..., :3]
  return values, pixels[..., -1], grey, 8


def _webp_lossless(data: bytes) -> bool:
  """Whether a WebP file holds a lossless (VP8L) image rather than a lossy (VP8) one."""
  at = 12
  while at + 8 <= len(data):
    if data[at : at + 4] == b"VP8L":
      return True
    size = int.from_bytes(data[at + 4 : at + 8], "little")
    at += 8 + size + size % 2  # chunks are padded to an even length
  return False


def read_picture(path: str | os.PathLike) -> Picture:
  """Reads a user's image for restoration, upright (EXIF orientation applied)."""
  path = Path(path)
  data = _read_bytes(path)
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # Decodes now, so truncated files fail here rather than later.
      orientation = image.getexif().get(_ORIENTATION, 1)
      # Many phones' JPEGs carry a multi-picture index; Pillow names them MPO.
      source_format = "JPEG" if image.format == "MPO" else image.format or ""
      subsampling = JpegImagePlugin.get_sampling(image) if source_format == "JPEG" else -1
      if _is_png16(data):
        values, alpha, grey = _read_png16(data)
        bits = 16
      else:
        values, alpha, grey, bits = _split(image)
  except _DECODE_ERRORS as error:
    raise _read_error(path, error) from error
  upright = _UPRIGHT.get(orientation, lambda a: a)
  values = upright(values).astype(np.float32) / np.float32(65535 if bits == 16 else 255)
  rgb = np.repeat(values[..., None], 3, axis=-1) if grey else values
  return Picture(
      np.ascontiguousarray(rgb),
      None if alpha is None else upright(alpha).copy(),
      grey,
      bits,
      source_format,
      source_format == "WEBP" and _webp_lossless(data),
      subsampling,
  )


def output_format(source_format: str, fmt: str = "same") -> str:
  """'PNG', 'JPEG' or 'WEBP' for a source format and a choice in OUTPUT_FORMATS."""
  if fmt not in OUTPUT_FORMATS:
    raise ValueError(f'output format {fmt!r} unknown (expected one of {", ".join(OUTPUT_FORMATS)})')
  if fmt != "same":
    return {"png": "PNG", "jpg": "JPEG"}[fmt]
  return source_format if source_format in ("JPEG", "WEBP") else "PNG"


def unfit(picture: Picture, out_format: str) -> str:
  """What of `picture` the format cannot hold ('' if nothing), so callers can refuse early."""
  if out_format == "JPEG" and picture.alpha is not None:
    return "an alpha channel"
  if out_format in ("JPEG", "WEBP") and picture.bits == 16:
    return "16 bits per channel"
  return ""


def _encode_png16(pixels: np.ndarray, grey: bool, alpha: bool) -> bytes:
  height, width = pixels.shape[:2]
  rows = np.ascontiguousarray(pixels.astype(">u2")).reshape(height, -1).view(np.uint8)
  buffer = io.BytesIO()
  png.Writer(width, height, greyscale=grey, alpha=alpha, bitdepth=16).write_packed(buffer, rows)
  return buffer.getvalue()


def encode_picture(rgb: np.ndarray, like: Picture, out_format: str) -> bytes:
  """File bytes of restored `rgb` ((H, W, 3) in [0, 1]) in the kind of `like`, as `out_format`.

  Written from arrays only, so none of the source's metadata can leak into the output.
  """
  reason = unfit(like, out_format)
  if reason:
    raise ValueError(f"{out_format} cannot hold {reason}")
  rgb = np.asarray(rgb, np.float32)
  if rgb.shape != like.rgb.shape:
    raise ValueError(f"expected restored pixels of shape {like.rgb.shape}, got {rgb.shape}")
  top = 65535 if like.bits == 16 else 255
  values = np.clip(np.rint((rgb.mean(axis=-1) if like.grey else rgb) * top), 0, top)
  pixels = values.astype(np.uint16 if like.bits == 16 else np.uint8)
  if like.alpha is not None:
    pixels = np.concatenate([pixels.reshape(*pixels.shape[:2], -1), like.alpha[..., None]], -1)
  if like.bits == 16:
    return _encode_png16(pixels, like.grey, like.alpha is not None)
  options = {
      "PNG": {},
      "JPEG": {"quality": QUALITY, "optimize": True},
      "WEBP": {"lossless": True, "exact": True} if like.lossless else {"quality": QUALITY},
  }
  options = options[out_format]
  if out_format == "JPEG" and like.subsampling >= 0:
    options["subsampling"] = like.subsampling
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=out_format, **options)
  return buffer.getvalue()
