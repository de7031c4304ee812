r"""Is the IMP ticket a winning ticket? The same sparsity reached four ways, trained alike.

  python -m mirl_jax.ticket_study --config configs/ticket_study.py --workdir runs/ticket_study

A lottery-ticket claim needs controls. At each sparsity level of an IMP run the
study trains, with exactly an IMP round's settings (epochs, schedule, and the
data order of that round, via `train.Run.train_round` and one `train.Trainer`):

  (a) imp           the method: a normal run in WORKDIR/imp (its tickets and
                    summary.json give the masks and PSNR of every round);
  (b) random_init   (a)'s masks, the survivors re-initialised from another seed;
  (c) random_prune  as many survivors as (a), drawn uniformly over all prunable
                    weights, rewound to (a)'s init;
  (d) one_shot      one global magnitude prune of the trained dense round 0
                    straight to (a)'s survivor count, rewound to (a)'s init.

(a) above (b) says its init matters, above (c) that its masks do, above (d)
that pruning iteratively does. (b)-(d) are trained at every
`config.study.every`-th pruned round and the last, each in its own folder
(WORKDIR/<variant>: mid-round checkpoints, one ticket per level and the same
reports as a run's round, reports.report_round), so a
preempted study resumes: every finished training is added to WORKDIR/study.json
at once and skipped on restart. study.md (tables) and study.png (mean PSNR
against the remaining weights) are written at the end.
"""

import os
import time
from pathlib import Path

from mirl_jax import runtime  # first: it sets XLA's flags before JAX starts

import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position
from absl import flags
from ml_collections import config_flags

from mirl_jax import checkpointing
from mirl_jax import config_keys
from mirl_jax import images
from mirl_jax import lottery
from mirl_jax import masks as masks_lib
from mirl_jax import reports
from mirl_jax import train

IMP = "imp"
CONTROLS = ("random_init", "random_prune", "one_shot")
VARIANTS = (IMP,) + CONTROLS
LABELS = {
    IMP: "(a) IMP, rewound to init",
    "random_init": "(b) IMP masks, random init",
    "random_prune": "(c) random pruning, rewound",
    "one_shot": "(d) one-shot, rewound",
}
STUDY = "study.json"


def run_config(config, workdir: str) -> ml_collections.ConfigDict:
  """The runs' config: without `study` (the IMP run's resume check would count a new
  `study.every` as another experiment), its demo data once in WORKDIR/demo."""
  config = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "study"})
  if config.data.demo:
    config.data.manual_dir = config.data.manual_dir or os.path.join(workdir, "demo", "raw")
    config.data.data_dir = config.data.data_dir or os.path.join(workdir, "demo", "tfds")
  return config


def levels(config) -> list[int]:
  """The pruned rounds where (b)-(d) are trained: every `every`-th one and the last."""
  last, every = config.lottery.rounds, config.study.every if "study" in config else 1
  if last < 1 or every < 1:
    raise ValueError(f"lottery.rounds={last}, study.every={every}: expected both >= 1")
  return sorted(set(range(every, last + 1, every)) | {last})


# ----------------------------------------------------------------------------
# study.json: one entry per (variant, round).


def study_entry(variant: str, summary: dict, alive: int, seconds: float | None) -> dict:
  """A summary.json-style entry (reports.summary_entry) with the PSNR means added."""
  psnr = {name: m["psnr"] for name, m in summary["results"].items()}
  inputs = {name: m["input_psnr"] for name, m in summary["results"].items()}
  return dict(
      variant=variant,
      round=summary["round"],
      remaining=summary["remaining"],
      alive=alive,
      psnr=psnr,
      mean_psnr=float(np.mean(list(psnr.values()))),
      input_psnr=inputs,
      mean_input_psnr=float(np.mean(list(inputs.values()))),
      seconds=seconds,
  )


def read_study(workdir: str) -> list[dict]:
  return reports.read_entries(Path(workdir) / STUDY)


def record(workdir: str, entry: dict) -> list[dict]:
  """Adds or replaces the entry of (variant, round), atomically; returns all entries."""
  return reports.update_entries(
      Path(workdir) / STUDY, entry, key=lambda e: (e["round"], VARIANTS.index(e["variant"]))
  )


# ----------------------------------------------------------------------------
# The study.


class Study:
  """The IMP run, then (b)-(d) at each level, each finished training recorded."""

  def __init__(self, config, workdir: str):
    self.config, self.levels, self.workdir = run_config(config, workdir), levels(config), workdir
    os.makedirs(workdir, exist_ok=True)
    self.trainer = train.Trainer(self.config, workdir)  # one compiled step for every training
    self.imp = train.Run(self.config, os.path.join(workdir, IMP), self.trainer)
    self.runs = {}

  def run_for(self, variant: str) -> train.Run:
    if variant not in self.runs:
      self.runs[variant] = train.Run(self.config, os.path.join(self.workdir, variant), self.trainer)
    return self.runs[variant]

  def start(self, variant: str, r: int, imp_masks, alive: int, round0_params):
    """(params, masks) a control starts level r from."""
    if variant == "random_init":
      fresh = lottery.rewind_target("random", model=self.imp.model, key=self.imp.key)
      return lottery.rewind(fresh, imp_masks, fresh), imp_masks
    if variant == "random_prune":
      masks = lottery.random_masks(imp_masks, alive, np.random.default_rng([self.config.seed, r]))
    else:
      masks = lottery.one_shot_masks(round0_params, alive)
    # Prompts kept trained (config.lottery.keep_trained_prompts) come from round 0.
    params = lottery.rewind(
        round0_params,
        masks,
        self.imp.rewind_target(),
        keep_trained=self.config.lottery.keep_trained_prompts,
    )
    return params, masks

  def train_control(self, variant: str, r: int, imp_masks, alive: int, round0_params) -> dict:
    """Trains one control at level r (or takes its ticket) and reports it as a run's round."""
    run, began = self.run_for(variant), time.time()
    if r in checkpointing.ticket_indices(run.workdir):  # trained, not yet recorded
      params, masks, _ = checkpointing.restore_ticket(run.workdir, r, model=run.model)
    else:
      params, masks = self.start(variant, r, imp_masks, alive, round0_params)
      params = run.train_round(r, params, masks)
      checkpointing.save_ticket(
          run.workdir,
          r,
          params,
          masks,
          dict(run.meta, round=r, variant=variant, **masks_lib.count(params, masks)),
      )
    summary = reports.report_round(
        run.workdir,
        r,
        run.model,
        params,
        masks,
        self.trainer.data,
        self.config.eval.seed,
        progress=False,
    )
    return study_entry(
        variant, summary, masks_lib.count(params, masks)["alive"], time.time() - began
    )

  def run(self) -> list[dict]:
    began = time.time()
    self.imp.train()
    entries = read_study(self.workdir)
    tickets = {}
    for summary in reports.read_summary(self.imp.workdir):
      r = summary["round"]
      tickets[r] = checkpointing.restore_ticket(self.imp.workdir, r, model=self.imp.model)
      entries = record(
          self.workdir,
          study_entry(
              IMP, summary, masks_lib.count(tickets[r].params, tickets[r].masks)["alive"], None
          ),
      )
    recorded = {(e["variant"], e["round"]) for e in entries}
    for r in self.levels:
      alive = masks_lib.count(tickets[r].params, tickets[r].masks)["alive"]
      for variant in CONTROLS:
        if (variant, r) in recorded:
          continue
        entry = self.train_control(variant, r, tickets[r].masks, alive, tickets[0].params)
        entries = record(self.workdir, entry)
        print(
            f"{LABELS[variant]} at {100 * entry['remaining']:.2f}% (round {r}): "
            f"mean PSNR {entry['mean_psnr']:.2f} dB, IMP "
            f"{_find(entries, IMP, r)['mean_psnr']:.2f} dB ({entry['seconds']:.0f} s)"
        )
    write_markdown(os.path.join(self.workdir, "study.md"), entries, self.config, self.levels)
    plot(os.path.join(self.workdir, "study.png"), entries)
    print(
        f"Study done in {time.time() - began:.0f} s this session: {self.workdir}/study.md, "
        f"study.png, {STUDY}"
    )
    return entries


def _find(entries: list[dict], variant: str, r: int) -> dict | None:
  return next((e for e in entries if e["variant"] == variant and e["round"] == r), None)


# ----------------------------------------------------------------------------
# Reports.


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def _psnr(entry: dict | None, key: str = "mean_psnr") -> str:
  return "—" if entry is None else f"{entry[key]:.2f}"


def write_markdown(path: str, entries: list[dict], config, trained: list[int]) -> None:
  """Mean PSNR per level and variant, then PSNR per task of every training."""
  rounds = sorted({e["round"] for e in entries})
  tasks = list(_find(entries, IMP, rounds[0])["psnr"])
  lines = [
      "# Winning-ticket study",
      "",
      f"IMP (a) at every round 0..{config.lottery.rounds}; (b)-(d) at rounds "
      f"{', '.join(map(str, trained))}. Every training: {config.train.epochs} epochs, "
      f"the data order of its round. PSNR in dB on the test sets, mean of "
      f"{len(tasks)} evaluations; input = the degraded images. With global IMP, (d) at round 1 "
      "is IMP's round 1 itself (one prune of the dense net): a check that both train alike.",
      "",
      _row(["round", "remaining %", "input"] + [LABELS[v] for v in VARIANTS]),
      _row(["---:"] * (3 + len(VARIANTS))),
  ]
  for r in rounds:
    found = [_find(entries, v, r) for v in VARIANTS]
    first = next(e for e in found if e is not None)
    lines.append(
        _row(
            [str(r), f"{100 * first['remaining']:.2f}", _psnr(first, "mean_input_psnr")]
            + [_psnr(e) for e in found]
        )
    )
  lines += [
      "",
      "## Per task",
      "",
      _row(["round", "remaining %", "variant"] + tasks + ["mean"]),
      _row(["---:", "---:", "---"] + ["---:"] * (len(tasks) + 1)),
  ]
  imp0 = _find(entries, IMP, rounds[0])
  lines.append(
      _row(
          ["", "", "input"]
          + [f"{imp0['input_psnr'][t]:.2f}" for t in tasks]
          + [_psnr(imp0, "mean_input_psnr")]
      )
  )
  for e in entries:
    lines.append(
        _row(
            [str(e["round"]), f"{100 * e['remaining']:.2f}", LABELS[e["variant"]]]
            + [f"{e['psnr'][t]:.2f}" for t in tasks]
            + [_psnr(e)]
        )
    )
  images.write_atomic(Path(path), ("\n".join(lines) + "\n").encode())


def plot(path: str, entries: list[dict]) -> None:
  """Mean PSNR against remaining weights (log axis, reversed); input PSNR dashed."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for variant, marker in zip(VARIANTS, "osD^"):
    points = [(100 * e["remaining"], e["mean_psnr"]) for e in entries if e["variant"] == variant]
    if points:
      ax.plot(*zip(*points), marker=marker, markerfacecolor="none", label=LABELS[variant])
  ax.axhline(entries[0]["mean_input_psnr"], color="gray", linestyle="--", label="input")
  ax.set_xscale("log")
  ticks = sorted({100 * e["remaining"] for e in entries})
  ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks], fontsize=8)
  ax.minorticks_off()
  ax.invert_xaxis()
  ax.set(xlabel="remaining prunable weights (%)", ylabel="mean PSNR (dB)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  reports.save_figure(fig, path)


# ----------------------------------------------------------------------------
# The command.

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the study's runs and reports live.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    runtime.fail(
        f"unexpected arguments {argv[1:]}: every setting is a flag (--config.KEY=VALUE)", 2
    )
  runtime.setup(FLAGS["verbosity"].present)

  def run():
    config_keys.validate(FLAGS.config, "train")
    Study(FLAGS.config, FLAGS.workdir).run()

  runtime.run_cleanly(run)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
