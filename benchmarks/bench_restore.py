"""Restoring a user's photo on this CPU (`--mode restore`): seconds per megapixel.

Times restore.restore_files, the whole of what the command line does per photo (read, tile,
network, blend, encode, write), on a synthetic noisy photo (a smooth scene with edges, Gaussian
noise of sigma 25) saved as PNG, with the default tile (512) and overlap (32). Two networks,
randomly initialised (speed does not depend on the values): the demo's (configs/demo.py) and
the default PromptIR (the reference's). Each runs in a fresh subprocess, so that its peak RSS
(ru_maxrss) is its own.

Reported per network: compile (one, as every tile has one shape, before the params are
drawn, as the command line compiles before it reads a ticket), the median of the runs in
seconds per megapixel of the photo and per tile,
and what that makes for a 12 MP (4000x3000) photo. Tiles overlap, so the time per megapixel
depends on the photo's size: 768x512 makes two tiles that cover 1.33 times its pixels, close to
a 12 MP photo's 1.38 (63 tiles). The default network's 512x512 tile takes tens of seconds on
2 cores, so its photo stays at 768x512 to keep the whole run under 8 minutes.

    python benchmarks/bench_restore.py [--models demo default] [--repeats 3] [--size H W]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `configs`
SIZES = {"demo": (768, 1024), "default": (512, 768)}  # (height, width)
BIG = (3000, 4000)  # a 12 MP photo


def _rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _model(name: str):
  """'default': PromptIR's defaults (the reference's network); 'demo': configs/demo.py's."""
  from mirl_jax import models  # pylint: disable=import-outside-toplevel

  if name == "default":
    return models.PromptIR()
  from configs import demo  # pylint: disable=import-outside-toplevel

  return models.PromptIR(**demo.get_config().model)


def noisy_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """(H, W, 3) uint8: gradients, a sharp-edged patch, and sigma-25 noise to restore."""
  y, x = np.mgrid[:height, :width] / np.float32(max(height, width))
  scene = np.stack([0.5 + 0.4 * np.sin(9 * x + 3 * y), 0.3 + 0.5 * y, 0.6 - 0.3 * x * y], -1)
  scene[height // 4 : height // 2, width // 4 : width // 2] = (0.9, 0.8, 0.2)
  noisy = scene + np.random.default_rng(seed).normal(0, 25 / 255, scene.shape)
  return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)


def tiles(height: int, width: int, tile: int = 512, overlap: int = 32) -> int:
  """How many network calls restore_array makes for a photo of this size."""
  from mirl_jax import restore  # pylint: disable=import-outside-toplevel

  m = restore.MULTIPLE
  ph, pw = -(-height // m) * m, -(-width // m) * m
  return len(restore._starts(ph, min(tile, ph), overlap)) * len(  # pylint: disable=protected-access
      restore._starts(pw, min(tile, pw), overlap)
  )  # pylint: disable=protected-access


def measure(
    model=None, size=(512, 768), tile: int = 512, overlap: int = 32, repeats: int = 3
) -> dict:
  """Figures of restore_files on a noisy photo of `size` (H, W); `model`: default PromptIR."""
  import jax  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from mirl_jax import models, restore  # pylint: disable=import-outside-toplevel

  model = models.PromptIR() if model is None else model
  height, width = size
  with tempfile.TemporaryDirectory() as tmp:
    photo = Path(tmp) / "photo.png"
    Image.fromarray(noisy_photo(height, width)).save(photo)
    plan = lambda: restore.plan_outputs([str(photo)], str(Path(tmp) / "out"), overwrite=True)
    start = time.perf_counter()  # as the command line does: compile, then read the ticket
    restore.compile_forward(model, [restore.input_shape(job.size, tile) for job in plan()])
    compile_s = time.perf_counter() - start
    forward = restore.make_forward(model, models.init_params(model, jax.random.key(0)))

    def run() -> float:
      jobs = plan()
      start = time.perf_counter()
      restore.restore_files(forward, jobs, tile=tile, overlap=overlap, progress=False)
      return time.perf_counter() - start

    run()  # its first call still traces the network
    times = [run() for _ in range(repeats)]
  median, megapixels, n = (
      statistics.median(times),
      height * width / 1e6,
      tiles(*size, tile, overlap),
  )
  return dict(
      size=list(size),
      tile=tile,
      overlap=overlap,
      tiles=n,
      repeats=repeats,
      compile_s=compile_s,
      median_s=median,
      s_per_mp=median / megapixels,
      s_per_tile=median / n,
      big_photo_s=median / n * tiles(*BIG, tile, overlap),
      peak_rss_gib=_rss_gib(),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--models", nargs="+", choices=("demo", "default"), default=["demo", "default"]
  )
  parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
  parser.add_argument(
      "--size", type=int, nargs=2, metavar=("H", "W"), help=f"photo size (default: {SIZES})"
  )
  parser.add_argument("--tile", type=int, default=512)
  parser.add_argument("--overlap", type=int, default=32)
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    size = args.size or SIZES[args.one]
    print(json.dumps(measure(_model(args.one), size, args.tile, args.overlap, args.repeats)))
    return
  print(
      f"| network | photo | tiles | compile s | median s | s/MP | s/tile | "
      f"{BIG[1]}x{BIG[0]} photo (est.) | peak RSS GiB |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for name in args.models:
    h, w = args.size or SIZES[name]
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            name,
            "--size",
            str(h),
            str(w),
            "--tile",
            str(args.tile),
            "--overlap",
            str(args.overlap),
            "--repeats",
            str(args.repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"| {name} | {w}x{h}, tile {r['tile']}, overlap {r['overlap']} | {r['tiles']} | "
        f"{r['compile_s']:.1f} | {r['median_s']:.2f} | {r['s_per_mp']:.2f} | "
        f"{r['s_per_tile']:.2f} | {r['big_photo_s'] / 60:.1f} min | "
        f"{r['peak_rss_gib']:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
  main()
