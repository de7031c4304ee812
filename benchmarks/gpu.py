"""Our JAX PromptIR against the PyTorch reference on one CUDA GPU, in one command.

Times, for both networks: the forward of 1x3x256x256 and 1x3x512x512 images, and a
training step at batch 8x3x64x64 and 8x3x128x128 as a pruned round runs it (L1 loss,
AdamW lr 2e-4 and weight decay 0.01, gradients of pruned weights zeroed, weights
re-masked after the step); each in fp32 (torch without TF32, ours with
precision="highest") and in bf16 (torch.autocast, ours PromptIR(dtype="bfloat16"):
bf16 compute, fp32 params, optimizer and loss). Reported: median time after a
warm-up, our compile time, and each side's peak device memory. Every measurement
runs in a fresh subprocess, so its peak is its own and a hang or crash is one
failed row (a timeout per item, within a budget of 8 minutes for the whole run).
The JSON is rewritten after every measurement: a run killed from outside keeps them.

On an H200 (2026-12-04) XLA's autotuning made our fp32 compiles outlast the default
timeouts (the forward at 256 over 120 s, the training step over 180 s);
`--xla_flags=--xla_gpu_autotune_level=0` brought them to 19 s and 118 s.

Our fp32 forward at 256 runs on the reference's own weights (mirl_jax.convert) and
the largest difference of the two outputs is printed: the two networks should
agree to about 1e-5.

Needs only jax (with CUDA), flax, optax, orbax, numpy, torch and einops; the
reference network is read from ../shared/reference/network.py, never copied.

    PYTHONPATH=. python benchmarks/gpu.py [--out benchmarks/results/gpu.json]
        [--no-reference] [--only forward-256-fp32 ...] [--budget 470] [--timeout S]
        [--xla_flags "--xla_gpu_autotune_level=0"] [--cudnn-benchmark]
    PYTHONPATH=. python benchmarks/gpu.py --smoke   # tiny network, runs on a CPU too
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (str(ROOT), str(HERE)):  # mirl_jax from this checkout; bench_* beside this file
  if _path not in sys.path:
    sys.path.insert(0, _path)

import bench_reference  # pylint: disable=wrong-import-position
import bench_train_step  # pylint: disable=wrong-import-position

#: The smoke run's network, ours and the reference's alike. The reference hard-codes
#: its prompt widths for dim 48, so tiny means no repeated transformer blocks: the
#: three prompt and noise-level blocks remain. On a CPU a deeper one compiles for minutes.
SMOKE_NET = {"dim": 48, "num_blocks": [0, 0, 0, 0], "num_refinement_blocks": 0}
#: On a CPU, --smoke compiles at XLA's lowest optimisation and runs torch on one thread
#: (two OpenMP threads crawl when a busy machine deschedules one): it checks this
#: script, not speed.
SMOKE_CPU_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
CHECK_TOLERANCE = 1e-3  # fp32 outputs in [0, 1]: a wrong layer differs by far more


# ----------------------------------------------------------------------------
# Child side.


def _timed(run, sync, warmup: int, repeats: int) -> list[float]:
  """Seconds of each of `repeats` synchronised calls, after `warmup` untimed ones."""
  for _ in range(warmup):
    sync(run())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(run())
    times.append(time.perf_counter() - start)
  return times


def _jax(spec: dict) -> dict:
  """Ours: compile, then time; peak device memory of this whole process."""
  import jax  # pylint: disable=import-outside-toplevel
  from mirl_jax import models  # pylint: disable=import-outside-toplevel

  net = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["net"].items()}
  model = models.PromptIR(**net, **({"dtype": "bfloat16"} if spec["precision"] == "bf16" else {}))
  device = jax.devices()[0]
  if spec["kind"] == "train":  # run_step leaves out its first step: one warm-up of ours
    out = bench_train_step.run_step(
        True, spec["warmup"] - 1 + spec["repeats"], spec["batch"], spec["size"], 1, model=model
    )
    times = out["steps_s"][spec["warmup"] - 1 :]
    out = {
        "median_s": statistics.median(times),
        "times_s": times,
        "compile_s": out["compile_s"],
        "xla_temp_bytes": round(out["temp_gib"] * 2**30),
        "loss": out["loss"],
    }
  else:
    out = _jax_forward(model, spec)
  stats = device.memory_stats() or {}  # None on a CPU
  return dict(
      out,
      peak_bytes=stats.get("peak_bytes_in_use"),
      device=device.device_kind,
      platform=device.platform,
      version=jax.__version__,
  )


def _reference_weights(model, path: Path):
  """(params, x, y) of the reference's fp32 forward as its child left them, or a reason why not."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  if not path.is_file():
    return "the reference's fp32 forward left no weights to compare with"
  try:
    from mirl_jax import convert  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return f"mirl_jax.convert does not import here ({e})"
  with np.load(path) as data:
    state_dict = {
        k[len("state_dict/") :]: data[k] for k in data.files if k.startswith("state_dict/")
    }
    x, y = data["x"], data["y"]
  return convert.params_from_torch(state_dict, model)[0], x, y


def _jax_forward(model, spec: dict) -> dict:
  """On the reference's weights and input where this row is the check, else on ours."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mirl_jax import models  # pylint: disable=import-outside-toplevel

  given = _reference_weights(model, Path(spec["check"])) if spec.get("check") else None
  if isinstance(given, tuple):
    params, x, expected = given
  else:
    params = models.init_params(model, jax.random.key(0))
    x = np.random.default_rng(0).random((spec["batch"], spec["size"], spec["size"], 3), np.float32)
  params, x = jax.device_put((params, x))
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  start = time.perf_counter()
  compiled = forward.lower(params, x).compile()
  compile_s = time.perf_counter() - start
  times = _timed(
      lambda: compiled(params, x), jax.block_until_ready, spec["warmup"], spec["repeats"]
  )
  mem = compiled.memory_analysis()
  out = {
      "median_s": statistics.median(times),
      "times_s": times,
      "compile_s": compile_s,
      "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
  }
  if isinstance(given, tuple):
    diff = np.abs(np.asarray(compiled(params, x)) - expected)
    out["check"] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
  elif given:
    out["check"] = {"skipped": given}
  return out


def _reference_network(net: dict):
  """The reference PromptIR (decoder=True: MIR-L's network), seeded, from the shared file."""
  import torch  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("reference_network", bench_reference.NETWORK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  torch.manual_seed(0)
  return module.PromptIR(decoder=True, **net)


def _torch(spec: dict) -> dict:
  """The reference: fp32 without TF32, or bf16 under autocast; peak of this whole process."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  device = spec["device"]
  cuda = device == "cuda"
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]
  if spec.get("torch_threads"):
    torch.set_num_threads(spec["torch_threads"])
  sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)
  autocast = lambda: torch.autocast(
      device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"
  )
  net = _reference_network(spec["net"]).to(device)
  rng = np.random.default_rng(0)
  shape = (spec["batch"], spec["size"], spec["size"], 3)  # NHWC, as ours gets it
  x_nhwc = rng.random(shape, np.float32)
  x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()).to(device)
  out = {}
  if spec["kind"] == "forward":
    net.eval()

    def run():
      with torch.no_grad(), autocast():
        return net(x)

    times = _timed(run, sync, spec["warmup"], spec["repeats"])
    if spec.get("check"):  # the weights and output our fp32 forward is compared with
      y = run().float().cpu().numpy().transpose(0, 2, 3, 1)
      np.savez(
          spec["check"],
          x=x_nhwc,
          y=y,
          **{f"state_dict/{k}": v.detach().cpu().numpy() for k, v in net.state_dict().items()},
      )
  else:
    run = bench_reference.masked_step(
        net,
        x,
        torch.from_numpy(rng.random(shape, np.float32).transpose(0, 3, 1, 2).copy()).to(device),
        autocast,
    )
    times = _timed(run, sync, spec["warmup"], spec["repeats"])
    out["loss"] = float(run().detach().float())  # one step more, after the timing
  peak = torch.cuda.max_memory_allocated() if cuda else None
  return dict(
      out,
      median_s=statistics.median(times),
      times_s=times,
      peak_bytes=peak,
      device=torch.cuda.get_device_name() if cuda else _cpu_name(),
      version=torch.__version__,
  )


def _probe() -> dict:
  """What runs here: JAX's device, torch's, the versions. Imports nothing of ours."""
  import jax  # pylint: disable=import-outside-toplevel

  device = jax.devices()[0]
  info = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jax_platform": device.platform,
      "jax_device": device.device_kind,
      "jax_device_count": jax.device_count(),
      "cpu": _cpu_name(),
  }
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return dict(info, torch=None)
  cuda = torch.cuda.is_available()
  return dict(
      info,
      torch=torch.__version__,
      torch_cuda=cuda,
      torch_device=torch.cuda.get_device_name() if cuda else None,
  )


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(
          (l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.machine()
      )
  except OSError:
    return platform.machine()


def child(spec: str) -> None:
  """One measurement in this fresh process; its figures are the last line of stdout."""
  spec = json.loads(spec)
  impl = spec["impl"]
  print(json.dumps(_probe() if impl == "probe" else {"jax": _jax, "torch": _torch}[impl](spec)))


# ----------------------------------------------------------------------------
# Driver side.


def plan(smoke: bool) -> list[dict]:
  """The settings in table order, each with `order`: the order they run in.

  The smaller settings run first, so a run that reaches the budget still has
  every kind of row.
  """
  if smoke:
    forwards, trains, reps = [32], [(2, 32)], dict(warmup=1, repeats=2)
  else:
    forwards, trains, reps = [256, 512], [(8, 64), (8, 128)], dict(warmup=3, repeats=10)
  settings = []
  for i, size in enumerate(forwards):
    for precision in ("fp32", "bf16"):
      settings.append(
          dict(
              name=f"forward-{size}-{precision}",
              kind="forward",
              batch=1,
              size=size,
              precision=precision,
              order=(i, 0),
              **reps,
          )
      )
  for i, (batch, size) in enumerate(trains):
    for precision in ("fp32", "bf16"):
      settings.append(
          dict(
              name=f"train-{batch}x{size}-{precision}",
              kind="train",
              batch=batch,
              size=size,
              precision=precision,
              order=(i, 1),
              **reps,
          )
      )
  return settings


def label(s: dict) -> str:
  what = "forward" if s["kind"] == "forward" else "train step"
  return f"{what} {s['batch']}x3x{s['size']}x{s['size']}, {s['precision']}"


def _run_child(spec: dict, timeout: float, env: dict) -> dict:
  """The child's figures plus its wall time, or {'error': ...} if it failed or timed out."""
  start = time.perf_counter()
  try:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - start}
  wall_s = time.perf_counter() - start
  if out.returncode == 0:
    try:
      return dict(json.loads(out.stdout.strip().splitlines()[-1]), wall_s=wall_s)
    except (IndexError, ValueError):
      pass
  why = " (killed: out of memory?)" if out.returncode == -9 else ""
  lines = out.stderr.strip().splitlines() or [""]
  last = next((l for l in reversed(lines) if re.match(r"[\w.]+(Error|Exception)\b", l)), lines[-1])[
      :300
  ]
  return {
      "error": f"exit code {out.returncode}{why}: {last}".rstrip(": "),
      "stderr_tail": out.stderr[-3000:],
      "wall_s": wall_s,
  }


def _time(seconds) -> str:
  """Three significant digits in ms or s."""
  if seconds is None or not math.isfinite(seconds):
    return "—"
  value, unit = (seconds * 1e3, "ms") if seconds < 1 else (seconds, "s")
  digits = max(0, 2 - math.floor(math.log10(max(value, 1e-3))))
  return f"{value:.{digits}f} {unit}"


def _mem(num_bytes) -> str:
  if num_bytes is None:
    return "—"
  return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.0f} MiB"


def _progress(r: dict) -> str:
  if "error" in r:
    return r["error"]
  text = _time(r["median_s"])
  if "compile_s" in r:
    text += f" (compile {_time(r['compile_s'])})"
  return text + (f", peak {_mem(r['peak_bytes'])}" if r.get("peak_bytes") else "")


def _failed(r: dict) -> str:
  return f"**{r['error']}**".replace("|", "/")


def table(rows: list[dict]) -> list[str]:
  lines = [
      "| setting | ours (JAX), median | compile | ours, peak memory | reference (PyTorch), "
      "median | reference, peak memory | ours / reference |",
      "|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    ours, ref = row.get("ours") or {"error": "not run"}, row.get("reference")
    if "error" in ours:
      cells = [_failed(ours), "—", "—"]
    else:
      cells = [_time(ours["median_s"]), _time(ours["compile_s"]), _mem(ours.get("peak_bytes"))]
    if ref is None:
      cells += ["—", "—"]
    elif "error" in ref:
      cells += [_failed(ref), "—"]
    else:
      cells += [_time(ref["median_s"]), _mem(ref.get("peak_bytes"))]
    ratio = "—"
    if ref and "error" not in ours and "error" not in ref:
      ratio = f"{ours['median_s'] / ref['median_s']:.2f}x time"
      if ours.get("peak_bytes") and ref.get("peak_bytes"):
        ratio += f", {ours['peak_bytes'] / ref['peak_bytes']:.2f}x memory"
    lines.append(f"| {label(row)} | " + " | ".join(cells) + f" | {ratio} |")
  return lines


def header(info: dict, args, settings: list[dict], wall_s: float) -> str:
  gpu = info["jax_platform"] == "gpu"
  device = info["jax_device"] if gpu else f"CPU ({info['cpu']}, {os.cpu_count()} cores)"
  if gpu and info.get("torch_device") not in (None, info["jax_device"]):
    device += f" (torch: {info['torch_device']})"
  versions = f"jax {info['jax']}" + (f", torch {info['torch']}" if info.get("torch") else "")
  reps = " or ".join(
      f"{r} calls after {w} warm-up"
      for w, r in sorted({(s["warmup"], s["repeats"]) for s in settings})
  )
  text = (
      f"{device}, {info['date']}, {versions}, Python {info['python']}; whole run "
      f"{wall_s / 60:.1f} min: `{info['command']}`\n\n"
      f"Medians of {reps}, each call synchronised. Peak memory: each row's own process "
      "(jax `peak_bytes_in_use`, `torch.cuda.max_memory_allocated`). Reference: TF32 off, "
      f"cudnn.benchmark {'on' if args.cudnn_benchmark else 'off'}."
  )
  if info.get("xla_flags"):
    text += f" XLA_FLAGS: `{info['xla_flags']}`."
  if args.smoke:
    text += (
        "\n\n`--smoke`: a tiny network (dim 48, no repeated blocks) and tiny inputs"
        + ("" if gpu else ", ours compiled at XLA's lowest optimisation, torch on one thread")
        + ": a check of this script, not a benchmark."
    )
  return text


def check_text(check: dict | None, setting: str) -> str:
  what = f"fp32 forward {setting.split()[1].rstrip(',')}, same weights and input"
  if not check:
    return f"{what}: not compared (no result)"
  if "skipped" in check:
    return f"{what}: not compared: {check['skipped']}"
  agree = "agree" if check["max_abs_diff"] <= CHECK_TOLERANCE else "**DIFFER**"
  return (
      f"{what}: max |ours - reference| = {check['max_abs_diff']:.2e} "
      f"(mean {check['mean_abs_diff']:.2e}): {agree}"
  )


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--out",
      help="JSON file (default benchmarks/results/gpu.json, with --smoke gpu_smoke.json)",
  )
  parser.add_argument(
      "--smoke", action="store_true", help="tiny network and inputs, 2 repeats; runs on a CPU too"
  )
  parser.add_argument(
      "--allow-cpu", action="store_true", help="run the full benchmark even where JAX sees no GPU"
  )
  parser.add_argument("--no-reference", action="store_true", help="time ours alone")
  parser.add_argument(
      "--only",
      nargs="+",
      metavar="SETTING",
      help="run only these settings: "
      + ", ".join(s["name"] for s in plan(False))
      + " (or --smoke's)",
  )
  parser.add_argument(
      "--budget",
      type=float,
      default=470,
      help="seconds for the whole run (default 470); settings past it are skipped",
  )
  parser.add_argument(
      "--timeout", type=float, help="seconds per measurement (default: forward 120, train step 180)"
  )
  parser.add_argument(
      "--cudnn-benchmark",
      action="store_true",
      help="let cuDNN autotune the reference's convolutions, as XLA does ours",
  )
  parser.add_argument(
      "--xla_flags",
      default="",
      help="XLA flags for every child, after the environment's XLA_FLAGS (on an H200 our fp32 "
      "compiles outlast the default timeouts unless --xla_gpu_autotune_level=0)",
  )
  parser.add_argument("--child", help=argparse.SUPPRESS)
  return parser


def preflight(args) -> tuple[dict, dict]:
  """The probe's figures and the children's environment, or exit with one line why not."""
  env = dict(os.environ)  # children find mirl_jax as this process does: see sys.path above
  probe = _run_child({"impl": "probe"}, 120, dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
  if "error" in probe:
    raise SystemExit(f"error: JAX does not start here: {probe['error']}")
  gpu = probe["jax_platform"] == "gpu"
  if not gpu and not (args.smoke or args.allow_cpu):
    raise SystemExit(
        f"error: a CUDA device is needed and JAX sees none (backend "
        f"{probe['jax_platform']}; install jax[cuda12]); --smoke for a tiny run "
        "on this CPU, --allow-cpu for the full one"
    )
  if not args.no_reference:
    why = bench_reference.available()
    if not why and gpu and not probe.get("torch_cuda"):
      why = f"torch {probe.get('torch')} sees no CUDA device (a CPU-only build?)"
    if why:
      raise SystemExit(
          f"error: cannot time the PyTorch reference: {why}; --no-reference to time ours alone"
      )
  smoke_flags = SMOKE_CPU_XLA_FLAGS if not gpu and args.smoke else ""
  flags = " ".join(filter(None, [env.get("XLA_FLAGS"), smoke_flags, args.xla_flags]))
  if flags:
    env["XLA_FLAGS"] = flags
  return probe, env


def measure(
    settings: list[dict],
    args,
    gpu: bool,
    env: dict,
    check_name: str | None,
    deadline: float,
    save=lambda: None,
) -> None:
  """Fills each setting's 'reference' and 'ours', one fresh child each, within the deadline.

  Calls `save` after each measurement, so a run killed from outside keeps what it finished.
  """
  start = time.perf_counter()
  sides = ([] if args.no_reference else [("reference", "torch")]) + [("ours", "jax")]
  runs = sorted(settings, key=lambda s: s["order"])
  with tempfile.TemporaryDirectory() as tmp:
    check_file = str(Path(tmp) / "reference_fp32.npz")
    for i, s in enumerate(runs, 1):
      spec = dict(
          {k: s[k] for k in ("kind", "batch", "size", "precision", "warmup", "repeats")},
          net=SMOKE_NET if args.smoke else {},
          device="cuda" if gpu else "cpu",
          cudnn_benchmark=args.cudnn_benchmark,
          torch_threads=1 if args.smoke and not gpu else None,
          check=check_file if s["name"] == check_name else None,
      )
      timeout = args.timeout or (120 if s["kind"] == "forward" else 180)
      print(f"[{i}/{len(runs)}] {label(s)} ...", flush=True)
      for side, impl in sides:  # the reference first: it leaves the weights for the check
        left = deadline - time.perf_counter()
        if left < 15:
          s[side] = {"error": f"skipped: over the {args.budget:.0f} s budget"}
        else:
          s[side] = _run_child(dict(spec, impl=impl), min(timeout, left), env)
        print(
            f"    {side}: {_progress(s[side])}  [{time.perf_counter() - start:.0f} s]", flush=True
        )
        save()


def main() -> None:
  args = _parser().parse_args()
  if args.child:
    child(args.child)
    return
  start = time.perf_counter()
  settings = plan(args.smoke)
  if args.only:
    unknown = sorted(set(args.only) - {s["name"] for s in settings})
    if unknown:
      raise SystemExit(
          f"error: unknown --only {' '.join(unknown)}; known: "
          + " ".join(s["name"] for s in settings)
      )
    settings = [s for s in settings if s["name"] in args.only]
  probe, env = preflight(args)
  out = Path(
      args.out or ROOT / "benchmarks" / "results" / ("gpu_smoke.json" if args.smoke else "gpu.json")
  )
  out.parent.mkdir(parents=True, exist_ok=True)
  # The check rides on the first row when it is an fp32 forward: the smallest one.
  first = settings[0] if settings else {}
  check_name = (
      first["name"]
      if (first.get("kind"), first.get("precision")) == ("forward", "fp32")
      and not args.no_reference
      else None
  )

  info = dict(
      probe,
      date=datetime.date.today().isoformat(),
      command=" ".join(["python", os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
      smoke=args.smoke,
      budget_s=args.budget,
      cudnn_benchmark=args.cudnn_benchmark,
      xla_flags=env.get("XLA_FLAGS", ""),
      net=SMOKE_NET if args.smoke else "default",
  )

  def save() -> str:
    """The report of the rows measured so far, also written to `out`."""
    info["wall_s"] = time.perf_counter() - start
    lines = [header(info, args, settings, info["wall_s"]), ""] + table(settings)
    check = first.get("ours", {}).get("check") if check_name else None
    if check_name:
      lines += ["", check_text(check, label(first))]
    text = "\n".join(lines)
    items = [
        dict(setting=label(s), **{k: v for k, v in s.items() if k != "order"}) for s in settings
    ]
    partial = out.with_name(out.name + ".partial")  # replaced whole: a kill never leaves half
    partial.write_text(
        json.dumps(dict(info, check=check, markdown=text, items=items), indent=1) + "\n"
    )
    os.replace(partial, out)
    return text

  measure(
      settings, args, probe["jax_platform"] == "gpu", env, check_name, start + args.budget, save
  )
  print("\n" + save())
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
