"""What is restored is what was saved: checksums in a save's metadata, and clear save errors.

A ticket is days of compute, and a flipped bit in its packed values or mask
changes it silently: Orbax stores arrays without checksums. Every save
therefore carries, in its JSON metadata, a sha256 of each item's contents
(paths, dtypes, shapes and bytes of every array, or the JSON of a state) and
one of the metadata itself; a restore recomputes them. A flipped bit then
either breaks a file's format (Orbax or TensorStore cannot read it) or changes
a digest; both end in `CorruptError` naming the save. A bit that changes
neither (a commit timestamp) changes nothing that is restored.
"""

import errno
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

KEY = "checksums"  # in a save's JSON metadata: {item: sha256, ..., "meta": sha256}


class CorruptError(ValueError):
  """A save whose contents do not match what was written, or that cannot be read at all."""


class WriteFailed(OSError):
  """A save that could not be written (full disk, I/O error): what was saved before is kept."""


def tree_digest(tree: Any) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes, in a fixed order."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def json_digest(value: Any) -> str:
  """sha256 of `value` as JSON: the same before saving and after a JSON round trip."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def seal(meta: dict, trees: dict[str, Any] | None = None, digests: dict[str, str] | None = None):
  """`meta` with the digests of `trees` (arrays), `digests` made elsewhere, and its own."""
  sums = {name: tree_digest(t) for name, t in (trees or {}).items()}
  sums.update(digests or {})
  sealed = dict(meta, **{KEY: sums})
  sealed[KEY] = dict(sums, meta=json_digest(sealed))
  return sealed


def check_meta(meta: Any, where: str) -> dict:
  """`meta` if its own digest matches; else CorruptError naming `where`.

  A save from before checksums were kept (no KEY at all) is let through with a
  warning: refusing it would strand every ticket made until then.
  """
  if not isinstance(meta, dict):
    raise CorruptError(f"{where} is corrupted: its metadata is not a JSON object")
  if KEY not in meta:
    logging.warning("%s was saved without checksums (an older version): restored unchecked", where)
    return meta
  sums = meta[KEY]
  if not isinstance(sums, dict) or "meta" not in sums:
    raise CorruptError(f"{where} is corrupted: its metadata's {KEY!r} is malformed")
  unsealed = dict(meta, **{KEY: {k: v for k, v in sums.items() if k != "meta"}})
  if json_digest(unsealed) != sums["meta"]:
    raise CorruptError(f"{where} is corrupted: its metadata does not match its checksum")
  return meta


def unsealed(meta: dict) -> dict:
  """`meta` as it was before `seal`."""
  return {k: v for k, v in meta.items() if k != KEY}


def check(
    meta: dict,
    where: str,
    trees: dict[str, Any] | None = None,
    digests: dict[str, str] | None = None,
) -> None:
  """CorruptError naming `where` and the item if any restored item differs from what was saved."""
  check_meta(meta, where)
  if KEY not in meta:
    return  # saved before checksums were kept: check_meta warned
  sums = meta[KEY]
  got = {name: tree_digest(t) for name, t in (trees or {}).items()}
  got.update(digests or {})
  for name, digest in got.items():
    if sums.get(name) != digest:
      raise CorruptError(
          f"{where} is corrupted: its {name!r} does not match the checksum saved with it"
      )


def reason(error: BaseException) -> str:
  """The OS's words for the first OS error in `error`'s chain, else its first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return os_message(seen.errno)
    seen = seen.__cause__ or seen.__context__
  text = str(error).strip().splitlines()
  for code in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EACCES):
    if os.strerror(code).lower() in str(error).lower():
      return os_message(code)
  return text[0] if text else type(error).__name__


def os_message(code: int) -> str:
  return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
