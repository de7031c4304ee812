"""What the web page downloads for the default network: dense, and a ticket with 10% of all its
parameters, against the dense float32 ONNX model; and the time of one tile in onnxruntime.

The weights are PromptIR's init (sizes and speed do not depend on the values); the ticket keeps
the largest-magnitude weights of each prunable tensor (one layer-wise prune: a global one at init
would empty the output conv, and the network would return its input), as many as leave 10% of
all parameters non-zero. Each bundle is what `--mode serve` writes (mirl_jax/web_export.py); the
browser downloads its manifest, graph, mask and survivors. The tile time is onnxruntime's CPU
provider on this machine (the page runs the same graph in WebAssembly, which is slower), against
the JAX forward of the same tile.

    python benchmarks/bench_web_bundle.py [--tile 256] [--out benchmarks/results]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_integrity import median_seconds  # pylint: disable=wrong-import-position
from mirl_jax import lottery  # pylint: disable=wrong-import-position
from mirl_jax import masks as masks_lib  # pylint: disable=wrong-import-position
from mirl_jax import models  # pylint: disable=wrong-import-position
from mirl_jax import restore  # pylint: disable=wrong-import-position
from mirl_jax import web_export  # pylint: disable=wrong-import-position


def ticket_masks(params, fraction: float):
  """Masks that leave `fraction` of all params non-zero (non-prunable ones all stay)."""
  counts = masks_lib.count(params, masks_lib.dense_masks(params))
  fixed = counts["params"] - counts["prunable"]
  alive = fraction * counts["params"] - fixed
  percent = 100.0 * (1.0 - alive / counts["prunable"])
  return lottery.prune(params, masks_lib.dense_masks(params), percent, scope="layerwise")


def _median_seconds(fn, repeats: int) -> float:
  fn()  # compile / warm up
  return median_seconds(fn, repeats)


def measure(tile: int, repeats: int) -> dict:
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel

  model = models.PromptIR()
  params = models.init_params(model, jax.random.key(0))
  out = {"tile": tile}
  with tempfile.TemporaryDirectory() as tmp:
    for name, masks in (("dense", None), ("ticket_10pct", ticket_masks(params, 0.10))):
      start = time.perf_counter()
      folder = web_export.write_bundle(model, params, Path(tmp) / name, tile, ticket_masks=masks)
      manifest = web_export.read_manifest(folder)
      sizes = dict(manifest["bytes"])
      sizes["manifest.json"] = (folder / web_export.MANIFEST).stat().st_size
      sizes["download"] += sizes["manifest.json"]
      masks = masks if masks is not None else masks_lib.dense_masks(params)
      count = masks_lib.count(masks_lib.apply_masks(params, masks), masks)
      out[name] = dict(
          sizes,
          nonzero_fraction=count["nonzero"] / count["params"],
          download_vs_dense_onnx=sizes["download"] / sizes["dense_onnx"],
          export_s=time.perf_counter() - start,
      )
      if name == "ticket_10pct":  # the page's session, in onnxruntime's CPU provider
        graph, dense = web_export.load_dense(folder)
        (Path(tmp) / "graph.onnx").write_bytes(graph)
        dense.tofile(Path(tmp) / web_export.DATA)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(Path(tmp) / "graph.onnx"), options)
        x = np.random.default_rng(0).random((1, tile, tile, 3), np.float32)
        feed = {session.get_inputs()[0].name: x}
        out["onnxruntime_tile_s"] = _median_seconds(lambda: session.run(None, feed), repeats)
        forward = restore.make_forward(model, masks_lib.apply_masks(params, masks))
        out["jax_tile_s"] = _median_seconds(lambda: np.asarray(forward(x)), repeats)
        out["max_abs_diff"] = float(
            np.abs(session.run(None, feed)[0] - np.asarray(forward(x))).max()
        )
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tile", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", type=Path, default=None, help="writes web_bundle.json there")
  args = parser.parse_args()
  r = measure(args.tile, args.repeats)
  mib = lambda b: f"{b / 2**20:.2f} MiB"
  print(f"default network, web bundle (tile {r['tile']}):")
  print("| model | non-zero params | download | of the dense fp32 ONNX |")
  print("|---|---:|---:|---:|")
  for name in ("dense", "ticket_10pct"):
    s = r[name]
    print(
        f"| {name} | {100 * s['nonzero_fraction']:.1f}% | {mib(s['download'])} "
        f"(graph {mib(s['graph.onnx'])}, mask {mib(s.get('weights.mask', 0))}, "
        f"survivors {mib(s['weights.values'])}) | {100 * s['download_vs_dense_onnx']:.1f}% "
        f"of {mib(s['dense_onnx'])} |"
    )
  print(
      f"one {r['tile']}x{r['tile']} tile, median of {args.repeats}: onnxruntime (CPU) "
      f"{r['onnxruntime_tile_s']:.2f} s, JAX {r['jax_tile_s']:.2f} s; max |difference| "
      f"{r['max_abs_diff']:.1e}"
  )
  if args.out:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web_bundle.json").write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
  main()
