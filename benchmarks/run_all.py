"""Every benchmark in one command: results.json and a results.md table ready for the README.

Each measurement runs in a fresh subprocess of this script (`--child`), so its peak RSS
(ru_maxrss) is its own and a crash (e.g. killed for lack of memory) is a failed row rather
than the end of the run. The measuring is the bench_*.py scripts' own functions. The PyTorch
reference (../shared/reference/network.py, bench_reference.py) is timed in the same run, right
after the figure it is compared with; `--no-reference` skips it where torch or einops are missing.

The full run takes about 15 minutes, half of it the default network's training step. `--quick`
uses the demo's tiny network everywhere, few repeats and no reference, to check this script in a
few minutes (mostly compiles of the tiny training step).

    python benchmarks/run_all.py --out benchmarks/results [--only NAME ...] [--quick] [--no-reference]
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_forward
import bench_reference
import bench_restore
import bench_train_step
import profile_step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `configs`; this folder (bench_*) is already on the path

ITEMS = (
    "forward",
    "restore",
    "train_step",
    "demo_train_step",
    "pipeline",
    "prune",
    "checkpoint_sizes",
    "profile",
)
TICKET_FRACTION = 0.10  # non-zero share of ALL params in the sparse checkpoint


def _model(name: str, **overrides):
  """'default': PromptIR's defaults (the reference's network); 'demo': configs/demo.py's;
  `overrides` change attributes (e.g. dtype, remat)."""
  from mirl_jax import models  # pylint: disable=import-outside-toplevel

  if name == "default":
    return models.PromptIR(**overrides)
  from configs import demo  # pylint: disable=import-outside-toplevel

  return models.PromptIR(**dict(demo.get_config().model, **overrides))


# ----------------------------------------------------------------------------
# Child side.


def _pipeline(workers: int, windows: int, window_batches: int, batch_size: int) -> dict:
  """Patches/s of bench_pipeline's demo case, on demo data built afresh in a temp dir."""
  import bench_pipeline  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from mirl_jax import demo_data  # pylint: disable=import-outside-toplevel

  flags.FLAGS(sys.argv[:1])  # Grain's worker processes read its absl flags: parse the defaults
  with tempfile.TemporaryDirectory() as tmp:
    demo_data.build_demo(Path(tmp) / "manual", Path(tmp) / "data")
    config = bench_pipeline.data_config(
        Path(tmp) / "data", demo_data.DEMO_TRAIN_SETS, workers, batch_size
    )
    return {"patches_per_s": bench_pipeline.measure(config, window_batches, windows)}


def _checkpoint(model: str, fraction: float | None) -> dict:
  """Bytes on disk of a ticket saved by save_ticket, and whether it restores exactly.

  fraction None: all masks True. Otherwise a global magnitude mask leaving `fraction` of ALL
  params non-zero; never-pruned tensors are stored whole, so their non-zeros count against it
  (a dense init has no zero prunable weight, so they are the non-zeros beyond the prunable).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mirl_jax import checkpointing, lottery, masks as masks_lib, models  # pylint: disable=import-outside-toplevel

  net = _model(model)
  params = models.init_params(net, jax.random.key(0))
  masks = masks_lib.dense_masks(params)
  if fraction is not None:
    counts = masks_lib.count(params, masks)
    keep = round(fraction * counts["params"]) - (counts["nonzero"] - counts["alive"])
    if keep <= 0:
      raise ValueError(f"never-pruned tensors alone hold over {fraction:.0%} of the params")
    masks = lottery.prune(params, masks, 100 * (1 - keep / counts["prunable"]))
    params = jax.tree.map(np.asarray, masks_lib.apply_masks(params, masks))
  counts = masks_lib.count(params, masks)
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    path = checkpointing.save_ticket(tmp, 0, params, masks, {})
    save_s = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    got, got_masks, _ = checkpointing.restore_ticket(tmp, 0, model=net)
  exact = all(
      jax.tree.structure(a) == jax.tree.structure(b)
      and all(
          x.dtype == y.dtype and np.array_equal(x, y)
          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
      )
      for a, b in ((params, got), (masks, got_masks))
  )
  return {
      "bytes": size,
      "dense_float32_bytes": 4 * counts["params"],
      "params": counts["params"],
      "nonzero": counts["nonzero"],
      "save_s": save_s,
      "restores_exactly": exact,
  }


def _profile(tiny: bool) -> dict:
  """profile_step's tables for the default (or tiny) network's step and forward."""
  results = profile_step.main(
      ["--tiny", "--batch", "2", "--size", "32", "--forward-size", "32"] if tiny else []
  )
  return {"markdown": "\n\n".join(profile_step.table(r) for r in results), "profiles": results}


CHILDREN = {
    "forward": lambda model, size, repeats, overrides: bench_forward.measure(
        size, repeats, _model(model, **overrides)
    ),
    "restore": lambda model, **kw: bench_restore.measure(_model(model), **kw),
    "train_step": lambda model, overrides, **kw: bench_train_step.run_step(
        model=_model(model, **overrides), **kw
    ),
    "profile": _profile,
    "prune": lambda model, repeats: bench_train_step.run_prune(repeats, _model(model)),
    "pipeline": _pipeline,
    "checkpoint": _checkpoint,
    "ref_forward": bench_reference.forward,
    "ref_train_step": bench_reference.train_step,
}


def child(spec: str) -> None:
  """Runs one measurement and prints its figures as the last line of JSON."""
  spec = json.loads(spec)
  out = CHILDREN[spec["fn"]](**spec["kwargs"])
  out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB
  print(json.dumps(out))


# ----------------------------------------------------------------------------
# Driver side.


def _job(item, name, setting, fn, reference=None, env=None, **kwargs) -> dict:
  return dict(
      item=item,
      name=name,
      setting=setting,
      fn=fn,
      reference=reference,
      env=env or {},
      kwargs=kwargs,
  )


def plan(quick: bool) -> list[dict]:
  """The measurements, in table order; `quick`: the demo network and few repeats."""
  from configs import demo  # pylint: disable=import-outside-toplevel

  data = demo.get_config().data
  big, net = ("demo", "demo network") if quick else ("default", "default network")
  reps = 2 if quick else 5
  train_env = {"XLA_FLAGS": bench_train_step.XLA_FLAGS}
  sizes = (32, 64) if quick else (128, 256)
  jobs = [
      _job(
          "forward",
          "forward",
          f"{net}, 1x{s}x{s}x3, compiled before the params exist (as --mode restore), "
          f"median of {reps}",
          "forward",
          None if quick else dict(fn="ref_forward", kwargs=dict(size=s, repeats=reps)),
          model=big,
          size=s,
          repeats=reps,
          overrides={},
      )
      for s in sizes
  ]
  jobs.append(
      _job(
          "forward",
          "forward, bfloat16",
          f"{net} with dtype bfloat16, 1x{sizes[-1]}x{sizes[-1]}x3, median of {reps}",
          "forward",
          model=big,
          size=sizes[-1],
          repeats=reps,
          overrides={"dtype": "bfloat16"},
      )
  )
  for name in ("demo",) if quick else ("demo", "default"):
    height, width = (64, 96) if quick else bench_restore.SIZES[name]
    tile, overlap = (32, 8) if quick else (512, 32)
    jobs.append(
        _job(
            "restore",
            "restore a photo",
            f"{name} network, {width}x{height} PNG, "
            f"tiles {tile} (overlap {overlap}), median of 2",
            "restore",
            model=name,
            size=[height, width],
            tile=tile,
            overlap=overlap,
            repeats=2,
        )
    )
  steps, size = (2, 32) if quick else (3, 64)
  for what, overrides in (
      ("remat blocks, float32 (the defaults)", {}),
      ("remat none", {"remat": "none"}),
      ("bfloat16", {"dtype": "bfloat16"}),
  ):
    jobs.append(
        _job(
            "train_step",
            "training step" + ", bfloat16" * ("dtype" in overrides),
            f"{net} ({what}), batch 8x{size}x{size}x3, AdamW, masked (a pruned "
            f"round), median of {steps}",
            "train_step",
            None
            if quick or overrides
            else dict(fn="ref_train_step", kwargs=dict(batch=8, size=size, steps=steps)),
            train_env,
            model=big,
            masked=True,
            steps=steps,
            batch=8,
            size=size,
            microbatches=1,
            overrides=overrides,
        )
    )
  steps = 3 if quick else 20
  for masked in (True, False):
    jobs.append(
        _job(
            "demo_train_step",
            f"training step, {'masked' if masked else 'dense'}",
            f"demo network, batch {data.batch_size}x{data.patch_size}x{data.patch_size}x3, AdamW, "
            f"median of {steps}",
            "train_step",
            None,
            train_env,
            model="demo",
            masked=masked,
            steps=steps,
            batch=data.batch_size,
            size=data.patch_size,
            microbatches=1,
            overrides={},
        )
    )
  windows, window_batches = (1, 10) if quick else (3, 100)
  for workers in (0, 2):
    jobs.append(
        _job(
            "pipeline",
            "input pipeline",
            f"demo data, 64x64 patches, batch {data.batch_size}, {workers} Grain "
            f"workers (RSS: main process only), median of {windows} windows of "
            f"{window_batches} batches",
            "pipeline",
            workers=workers,
            windows=windows,
            window_batches=window_batches,
            batch_size=data.batch_size,
        )
    )
  jobs.append(
      _job(
          "prune",
          "pruning round",
          f"{net}, global 20% of all prunable weights (all alive), median of {reps}",
          "prune",
          model=big,
          repeats=reps,
      )
  )
  for fraction in (None, TICKET_FRACTION):
    what = "all masks True" if fraction is None else f"{fraction:.0%} of all params non-zero"
    jobs.append(
        _job(
            "checkpoint_sizes",
            "checkpoint on disk",
            f"{net}, {what}",
            "checkpoint",
            model=big,
            fraction=fraction,
        )
    )
  jobs.append(
      _job(
          "profile",
          "profile",
          f"{net}: where the training step's and the forward's "
          "time and memory go (tables below)",
          "profile",
          tiny=quick,
      )
  )
  return jobs


def run_job(job: dict, timeout: float) -> dict:
  """The child's figures plus its wall time, or {'error': ...} if it failed."""
  spec = json.dumps({"fn": job["fn"], "kwargs": job["kwargs"]})
  job = dict(job, env=job.get("env") or {})
  start = time.perf_counter()
  try:
    # Every child runs with the XLA flags that every mirl_jax command sets.
    env = dict(os.environ, **{"XLA_FLAGS": bench_train_step.XLA_FLAGS, **job["env"]})
    out = subprocess.run(
        [sys.executable, __file__, "--child", spec],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - start}
  wall_s = time.perf_counter() - start
  if out.returncode:
    why = " (killed: out of memory?)" if out.returncode == -9 else ""
    lines = out.stderr.strip().splitlines() or [""]
    last = next(
        (l for l in reversed(lines) if re.match(r"[\w.]+(Error|Exception)\b", l)), lines[-1]
    )[:200]
    return {
        "error": f"exit code {out.returncode}{why}: {last}".rstrip(": "),
        "stderr_tail": out.stderr[-3000:],
        "wall_s": wall_s,
    }
  return dict(json.loads(out.stdout.strip().splitlines()[-1]), wall_s=wall_s)


def _s(seconds: float) -> str:
  """Three significant digits, trailing zeros kept (2.10 s, not 2.1 s)."""
  digits = 2 - math.floor(math.log10(max(seconds, 1e-4)))
  return f"{seconds:.{min(4, max(0, digits))}f} s"


def _mib(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:.1f} MiB"


def result_text(job: dict, r: dict) -> str:
  if "error" in r:
    return f"**failed**: {r['error']}".replace("|", "/")
  fn = job["fn"]
  if fn == "forward":
    return f"{_s(r['median_s'])} (compile {_s(r['compile_s'])})"
  if fn == "train_step":
    return f"{_s(r['step_s'])} per step (compile {_s(r['compile_s'])})"
  if fn == "prune":
    return _s(r["prune_s"])
  if fn == "restore":
    return f"{r['s_per_mp']:.1f} s/MP, {_s(r['s_per_tile'])}/tile (compile {_s(r['compile_s'])})"
  if fn == "pipeline":
    return f"{r['patches_per_s']:.0f} patches/s"
  if fn == "profile":
    return "; ".join(
        f"{p['name']}: {p['wall_s']:.2f} s traced, compile {p['compile_s']:.1f} s"
        for p in r["profiles"]
    )
  share = r["bytes"] / r["dense_float32_bytes"]
  return (
      f"{_mib(r['bytes'])} = {share:.1%} of dense float32 ({_mib(r['dense_float32_bytes'])}),"
      f" {r['nonzero'] / r['params']:.1%} non-zero; "
      + ("restores exactly" if r["restores_exactly"] else "**restore differs**")
  )


def table(jobs: list[dict], results: list[dict]) -> list[str]:
  lines = [
      "| benchmark | setting | result (median) | peak RSS | PyTorch reference, same run | "
      "ours / reference |",
      "|---|---|---|---|---|---|",
  ]
  for job, r in zip(jobs, results):
    rss = f"{r['peak_rss_gib']:.2f} GiB" if "peak_rss_gib" in r else "—"
    ref, ratio = r.get("reference"), "—"
    if ref and "error" not in r and "error" not in ref:
      time_s = r.get("median_s", r.get("step_s"))
      ref_s = ref.get("median_s", ref.get("step_s"))
      ratio = f"{time_s / ref_s:.2f}x time, {r['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x RSS"
      ref = f"{_s(ref_s)}, {ref['peak_rss_gib']:.2f} GiB"
    elif ref:
      ref = f"**failed**: {ref['error']}".replace("|", "/")
    lines.append(
        f"| {job['name']} | {job['setting']} | {result_text(job, r)} | {rss} | "
        f"{ref or '—'} | {ratio} |"
    )
  return lines


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "ram_gib": round(ram, 1),
      "jax": importlib.metadata.version("jax"),
      "python": platform.python_version(),
      "load_average_at_start": os.getloadavg()[0],
  }


def write(out: Path, info: dict, jobs: list[dict], results: list[dict]) -> None:
  """Both files, rewritten after every measurement so an interrupted run keeps what it has."""
  m = info["machine"]
  header = (
      f"Measured {info['date']} on {m['cpu']} ({m['cores']} cores, {m['ram_gib']:.0f} GiB "
      f"RAM; load average {m['load_average_at_start']:.1f} at start), jax {m['jax']}, "
      f"CPU backend, whole run {info['wall_s'] / 60:.0f} min: `{info['command']}`"
  )
  if info["quick"]:
    header += (
        "\n\n`--quick`: the demo's tiny network everywhere; not comparable with the reference."
    )
  items = [dict(job, result=r) for job, r in zip(jobs, results)]
  (out / "results.json").write_text(json.dumps(dict(info, items=items), indent=1) + "\n")
  profiles = [r["markdown"] for r in results if "markdown" in r]
  (out / "results.md").write_text(
      "\n".join(
          [header, ""]
          + table(jobs, results)
          + ["", "## Profile (benchmarks/profile_step.py)", ""] * bool(profiles)
          + profiles
      )
      + "\n"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results", help="folder for results.*")
  parser.add_argument("--only", nargs="+", choices=ITEMS, help="run only these items")
  parser.add_argument("--quick", action="store_true", help="tiny network, few repeats")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
  parser.add_argument(
      "--no-reference",
      action="store_true",
      help="skip timing the PyTorch reference (no torch or einops here)",
  )
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child)
    return
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  jobs = [j for j in plan(args.quick) if not args.only or j["item"] in args.only]
  command = shlex.join(["python", os.path.relpath(__file__, ROOT)] + sys.argv[1:])
  info = {
      "date": datetime.date.today().isoformat(),
      "command": command,
      "quick": args.quick,
      "machine": machine(),
      "wall_s": 0.0,
  }
  start, results = time.perf_counter(), []
  for i, job in enumerate(jobs, 1):
    print(f"[{i}/{len(jobs)}] {job['name']}: {job['setting']} ...", flush=True)
    results.append(run_job(job, args.timeout))
    if job["reference"] and not args.no_reference:
      why = bench_reference.available()
      results[-1]["reference"] = (
          run_job(dict(job, **job["reference"]), args.timeout) if not why else {"error": why}
      )
    info["wall_s"] = time.perf_counter() - start
    print(f"    {result_text(job, results[-1])} ({results[-1]['wall_s']:.0f} s)", flush=True)
    if results[-1].get("reference"):
      ref = results[-1]["reference"]
      print(
          f"    reference: {ref.get('error') or _s(ref.get('median_s', ref.get('step_s')))}",
          flush=True,
      )
    write(out, info, jobs[:i], results)
  print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
  main()
