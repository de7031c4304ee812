"""Where a training step's (or a forward's) time and memory go, by kind of op.

Compiles the step with XLA's live-range dump, runs it once to warm up and once
under `jax.profiler`, then sorts every executed XLA op into a kind (1x1 conv,
3x3 conv, depthwise conv, attention matmuls, ...) from the op's metadata: the
Flax module path and the primitive JAX recorded for it. Time is each kind's
share of the summed op time (ops on the two CPU threads can overlap, so the sum
exceeds the wall time); memory is each kind's share of the buffers XLA holds at
its planned peak, as its buffer assignment reports it. A fusion counts as the
kind of its dot or convolution if it has one, else of its root op. Also counts
the compiled kernels of each kind, since the compile time grows with them.

    python benchmarks/profile_step.py [--what step forward] [--batch 8] [--size 64]
        [--forward-size 128] [--dtype float32] [--json out.json]
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirl_jax import runtime  # pylint: disable=wrong-import-position,unused-import  (XLA flags)

import bench_train_step  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

KINDS = (
    "1x1 conv (matmul)",
    "3x3 conv",
    "depthwise 3x3 conv",
    "attention matmuls",
    "attention normalise + softmax",
    "layer norm",
    "GELU gating",
    "prompt blocks",
    "pad / slice / transpose / copy",
    "loss + residual + other",
    "ops on params: optimizer, masks, mean",
    "params, optimizer state, masks, batch",
)
_MOVES = {
    "copy",
    "transpose",
    "pad",
    "slice",
    "concatenate",
    "dynamic-slice",
    "bitcast",
    "dynamic-update-slice",
    "broadcast",
    "reshape",
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "copy-start",
    "copy-done",
}
_POINTWISE = re.compile(
    r"/(qkv|project_in|project_out|reduce_chan_level\d|" r"reduce_noise_level\d)/"
)


def kind_of(op_name: str, opcodes: set) -> str:
  """The kind of an op from its metadata op_name and the opcodes it (or its fusion) runs."""
  if opcodes == {"parameter"}:
    return KINDS[11]
  if "convolution" in opcodes:
    return KINDS[1]
  if opcodes and opcodes <= _MOVES:
    return KINDS[8]
  if not op_name.startswith("jit("):
    return KINDS[10]  # named after an argument: the update of params, state or masks
  if "dwconv/" in op_name:
    return KINDS[2]
  if "/prompt" in op_name:
    return KINDS[7]
  if "dot" in opcodes and "/attn/" in op_name and not _POINTWISE.search(op_name):
    return KINDS[3]
  if _POINTWISE.search(op_name):
    return KINDS[0]
  if "/attn/" in op_name:
    return KINDS[4]
  if re.search(r"/norm\d/", op_name):
    return KINDS[5]
  if "/ffn/" in op_name:
    return KINDS[6]
  if "PromptIR" not in op_name:
    return KINDS[10]
  return KINDS[9]


def parse_hlo(text: str) -> tuple[dict, list]:
  """{instruction: (op_name, opcodes)} for every instruction of an optimized HLO
  module, and the names of those that run as kernels (not inside a fusion or a
  reduction's computation).

  A fusion's opcodes are those of its fused computation, and its op_name that of
  its first dot or convolution if it has one (else its own).
  """
  computations, current = {}, None
  instr = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = [^=]*?\b([a-z][a-z\-]*)\((.*)$")
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      current = computations.setdefault(head.group(1), [])
      continue
    m = instr.match(line)
    if m and current is not None:
      name, opcode, rest = m.groups()
      op_name = re.search(r'op_name="([^"]*)"', rest)
      called = re.search(r"calls=%?([\w.\-]+)", rest)
      current.append(
          (name, opcode, op_name.group(1) if op_name else "", called.group(1) if called else None)
      )
  inner_computations = set(re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", text))
  kernels = [
      name
      for c, body in computations.items()
      if c not in inner_computations
      for name, opcode, _, _ in body
  ]
  table = {}
  for body in computations.values():
    for name, opcode, op_name, called in body:
      if opcode == "fusion" and called in computations:
        inner = computations[called]
        opcodes = {o for _, o, _, _ in inner} - {"parameter"}
        heavy = [n for _, o, n, _ in inner if o in ("dot", "convolution") and n]
        table[name] = (heavy[0] if heavy else op_name, opcodes)
      else:
        table[name] = (op_name, {opcode})
  return table, kernels


def op_times(trace_dir: str, module: str) -> collections.Counter:
  """Summed seconds per HLO op of `module` in the trace under `trace_dir`."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  times = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module") == module and "hlo_op" in stats:
          times[stats["hlo_op"]] += event.duration_ns / 1e9
  return times


def peak_buffers(dump_dir: str) -> dict:
  """{instruction: bytes} of the buffers live at the planned peak (XLA's live-range dump)."""
  path = glob.glob(os.path.join(dump_dir, "*live-range.txt"))[0]
  text = Path(path).read_text()
  block = text.split("(peak):", 1)[1].split("Stack trace", 1)[0]
  return {
      m.group(1): int(m.group(2))
      for m in re.finditer(r"^\s+([\w.\-]+)\{[^}]*\}: (\d+) bytes", block, re.M)
  }


def profile(fn, args, name: str, title: str = "") -> dict:
  """Compile `fn(*args)` (jitted; `name`: its function's name), run it, and break its
  time, memory and kernels down."""
  with tempfile.TemporaryDirectory() as tmp:
    dump = os.path.join(tmp, "dump")
    t = time.perf_counter()
    compiled = fn.lower(*args).compile(
        compiler_options={
            "xla_dump_to": dump,
            "xla_dump_hlo_as_text": True,
            "xla_dump_hlo_module_re": name,
        }
    )
    compile_s = time.perf_counter() - t  # includes writing the dump
    peak = peak_buffers(dump)
    jax.block_until_ready(compiled(*args))
    t = time.perf_counter()
    with jax.profiler.trace(os.path.join(tmp, "trace")):
      jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - t
    times = op_times(os.path.join(tmp, "trace"), f"jit_{name}")
  table, kernels = parse_hlo(compiled.as_text())
  rows = {k: {"seconds": 0.0, "peak_bytes": 0, "kernels": 0} for k in KINDS}
  for op, seconds in times.items():
    if op in table and table[op][1] != {"while"} and table[op][1] != {"call"}:
      rows[kind_of(*table[op])]["seconds"] += seconds
  for op, size in peak.items():
    op_name, opcodes = table.get(op, ("", set()))
    rows[kind_of(op_name or op, opcodes)]["peak_bytes"] += size
  for op in kernels:
    op_name, opcodes = table[op]
    if not opcodes <= {
        "parameter",
        "constant",
        "tuple",
        "get-tuple-element",
        "bitcast",
        "while",
        "call",
    }:
      rows[kind_of(op_name, opcodes)]["kernels"] += 1
  top = [
      {"op": op, "seconds": seconds, "kind": kind_of(*table[op]), "op_name": table[op][0]}
      for op, seconds in times.most_common()
      if op in table and table[op][1] != {"while"}
  ]
  big = [
      {
          "op": op,
          "bytes": size,
          "kind": kind_of(*table.get(op, (op, set()))),
          "op_name": table.get(op, ("", set()))[0],
      }
      for op, size in sorted(peak.items(), key=lambda kv: -kv[1])
  ]
  return {
      "name": title or name,
      "compile_s": compile_s,
      "wall_s": wall,
      "kinds": rows,
      "slowest_ops": top[:50],
      "largest_at_peak": big[:50],
  }


def table(result: dict) -> str:
  rows, total_s = result["kinds"], sum(r["seconds"] for r in result["kinds"].values())
  total_b = sum(r["peak_bytes"] for r in rows.values())
  lines = [
      f"**{result['title']}**: {result['wall_s']:.2f} s traced wall time, "
      f"{total_s:.2f} s summed op time, {total_b / 2**30:.2f} GiB of buffers at "
      f"XLA's planned peak, compile {result['compile_s']:.1f} s",
      "",
      "| kind of op | op time | share | at peak | share | kernels |",
      "|---|---|---|---|---|---|",
  ]
  for kind, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"]):
    share = 100 * r["seconds"] / max(total_s, 1e-9)
    lines.append(
        f"| {kind} | {r['seconds']:.2f} s | {share:.0f}% "
        f"| {r['peak_bytes'] / 2**20:.0f} MiB "
        f"| {100 * r['peak_bytes'] / max(total_b, 1):.0f}% | {r['kernels']} |"
    )
  return "\n".join(lines)


def top_ops(result: dict, n: int) -> str:
  """The `n` slowest ops and the `n` largest buffers at the peak, with their op_names."""
  lines = [f"slowest ops of the {result['name']}:"]
  lines += [
      f"  {o['seconds'] * 1e3:8.1f} ms  {o['kind']:<30} {o['op_name'][:110]}"
      for o in result["slowest_ops"][:n]
  ]
  lines.append(f"largest buffers at the {result['name']}'s planned peak:")
  lines += [
      f"  {o['bytes'] / 2**20:8.1f} MiB {o['kind']:<30} {o['op_name'][:110] or o['op']}"
      for o in result["largest_at_peak"][:n]
  ]
  return "\n".join(lines)


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--what", nargs="+", default=["step", "forward"], choices=["step", "forward"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--forward-size", type=int, default=128)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--remat", default="blocks", help="PromptIR's remat (model.remat)")
  parser.add_argument("--tiny", action="store_true", help="a tiny network (for tests)")
  parser.add_argument("--top", type=int, default=0, help="also list the N slowest ops")
  parser.add_argument("--json", help="also write the figures here")
  args = parser.parse_args(argv)
  from mirl_jax import models, train_step as ts  # pylint: disable=import-outside-toplevel

  kw = (
      dict(
          dim=8,
          num_blocks=(1, 1, 2, 2),
          num_refinement_blocks=1,
          prompt_dims=(8, 16, 32),
          prompt_sizes=(8, 4, 2),
      )
      if args.tiny
      else {}
  )
  model = models.PromptIR(dtype=args.dtype, remat=args.remat, **kw)
  net = "tiny network" if args.tiny else "default network"
  results = []
  if "step" in args.what:
    mesh, state, masks, x, y = bench_train_step.setup(model, args.batch, args.size)
    step = ts.make_train_step(mesh, donate=False)
    result = profile(step, (state, masks, x, y), "step", "training step")
    result["title"] = (
        f"training step, {net} ({args.dtype}, remat {args.remat}), batch "
        f"{args.batch}x{args.size}x{args.size}x3, L1 + AdamW, masked"
    )
    results.append(result)
  if "forward" in args.what:
    params = models.init_params(model, jax.random.key(0))
    x = np.random.default_rng(0).random((1, args.forward_size, args.forward_size, 3), np.float32)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    result = profile(forward, (params, x), "_lambda", "forward")
    result["title"] = f"forward, {net} ({args.dtype}), 1x{args.forward_size}x{args.forward_size}x3"
    results.append(result)
  for result in results:
    print(table(result), end="\n\n", flush=True)
    if args.top:
      print(top_ops(result, args.top), end="\n\n", flush=True)
  if args.json:
    Path(args.json).write_text(json.dumps(results, indent=1))
  return results


if __name__ == "__main__":
  main()
