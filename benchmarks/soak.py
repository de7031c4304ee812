"""What a 16-round run holds after each round, at demo size: memory, open files, threads, children.

Runs the command line (configs/demo.py) for 16 shortened rounds (one epoch each, no warmup) with
Grain worker processes as in real runs, then reads what mirl_jax.resources recorded after every
round (WORKDIR/resources/process_0.json): prints the table, writes it with the run's settings to
benchmarks/results/soak.json and plots it in benchmarks/results/soak.png. Real runs train 16
rounds over days; anything a round leaves behind shows here as a rise from round 2 on (rounds 0
and 1 still start things once: compiles, the pruned step, multiprocessing's resource tracker).
tests/test_soak.py checks the same with the tiny network.

    python benchmarks/soak.py [--rounds 16] [--workers 2] [--percent 20] [--out benchmarks/results]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirl_jax import resources

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("rss_mb", "peak_rss_mb", "open_fds", "threads", "children")


def command(workdir: Path, args) -> list[str]:
  return [
      sys.executable,
      "-m",
      "mirl_jax.main",
      f"--config={ROOT / 'configs' / 'demo.py'}",
      f"--workdir={workdir}",
      f"--config.lottery.rounds={args.rounds - 1}",
      f"--config.lottery.percent={args.percent}",
      f"--config.train.epochs={args.epochs}",
      "--config.train.warmup_epochs=0",
      f"--config.train.checkpoint_every_steps={args.checkpoint_every}",
      f"--config.data.worker_count={args.workers}",
  ]


def table(entries: list[dict]) -> str:
  lines = ["| round | RSS MB | peak RSS MB | open fds | threads | children |", "|" + "---:|" * 6]
  for e in entries:
    lines.append(
        f"| {e['round']} | {e['rss_mb']:.0f} | {e['peak_rss_mb']:.0f} | {e['open_fds']} | "
        f"{e['threads']} | {e['children']} |"
    )
  return "\n".join(lines)


def growth(entries: list[dict], settled: int = 2) -> dict:
  """Each figure's change from round `settled` to the last."""
  if len(entries) <= settled:
    return {}
  return {k: entries[-1][k] - entries[settled][k] for k in COLUMNS}


def plot(entries: list[dict], path: Path, title: str) -> None:
  """Three panels over the rounds: RSS and peak RSS; open files and children; threads."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel

  rounds = [e["round"] for e in entries]
  fig, (mem, files, threads) = plt.subplots(
      3, 1, figsize=(7.5, 7.5), sharex=True, gridspec_kw=dict(height_ratios=(2, 1.3, 1))
  )
  mem.plot(rounds, [e["peak_rss_mb"] for e in entries], marker="s", label="peak RSS")
  mem.plot(rounds, [e["rss_mb"] for e in entries], marker="o", label="RSS")
  mem.set_ylabel("memory (MB)")
  mem.set_title(title, fontsize=10)
  files.plot(rounds, [e["open_fds"] for e in entries], marker="o", label="open fds")
  files.plot(rounds, [e["children"] for e in entries], marker="^", label="child processes")
  files.set_ylabel("count")
  threads.plot(rounds, [e["threads"] for e in entries], marker="o", color="gray", label="threads")
  threads.set_ylabel("OS threads")
  threads.set_xlabel("round (each point: after the round's reports)")
  threads.set_xticks(rounds)
  for ax in (files, threads):
    ax.set_ylim(0, 1.6 * max(max(line.get_ydata()) for line in ax.get_lines()))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  for ax in (mem, files, threads):
    ax.axvline(2, color="k", lw=0.6, ls=":")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
  mem.text(
      2.1, 0.02, "from round 2: what rounds leave", transform=mem.get_xaxis_transform(), fontsize=8
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=16, help="rounds in all, dense round 0 too")
  parser.add_argument("--epochs", type=int, default=1, help="per round (the demo trains 8)")
  parser.add_argument("--workers", type=int, default=2, help="Grain worker processes")
  parser.add_argument(
      "--percent",
      type=float,
      default=20.0,
      help="pruned per round (the paper's 20: by round 15, 3.5%% of the weights remain)",
  )
  parser.add_argument("--checkpoint_every", type=int, default=20, help="steps between checkpoints")
  parser.add_argument("--workdir", help="the run's workdir (default: a temporary one)")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--plot_only", action="store_true", help="re-plot OUT/soak.json; no run")
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.plot_only:
    result = json.loads((out / "soak.json").read_text())
    plot(result["entries"], out / "soak.png", result["title"])
    return
  with tempfile.TemporaryDirectory() as temporary:
    workdir = Path(args.workdir or Path(temporary) / "run")
    cmd = command(workdir, args)
    print(" ".join(cmd), flush=True)
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    wall_s = time.monotonic() - start
    entries = resources.read(str(workdir))
  title = (
      f"After each round: demo network, {len(entries)} rounds of {args.epochs} epoch, "
      f"{args.percent:g}% pruned a round, {args.workers} Grain workers"
  )
  result = dict(
      title=title,
      command=cmd[1:],
      returncode=done.returncode,
      wall_s=round(wall_s, 1),
      cpus=os.cpu_count(),
      growth_from_round_2=growth(entries),
      # e.g. multiprocessing's resource_tracker on shared memory Grain's workers left behind
      leak_warnings=[line for line in done.stderr.splitlines() if "leaked" in line],
      entries=entries,
  )
  (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
  print(table(entries))
  print(f"wall {wall_s:.0f} s, exit {done.returncode}; from round 2 on: {growth(entries)}")
  if entries:
    plot(entries, out / "soak.png", title)
  if done.returncode:
    sys.exit(f"the run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


if __name__ == "__main__":
  main()
