r"""Is the IMP ticket a winning ticket? The same sparsity reached four ways, over several seeds.

  python -m mirl_jax.ticket_study --config configs/ticket_study.py --workdir runs/ticket_study

A lottery-ticket claim needs controls, and a difference between them needs more than one
seed. For each seed in `config.study.seeds` (the init key and the data order of every
round), the study runs IMP (WORKDIR/seed_S/imp: a normal run, every round reported), then
at each round in `config.study.control_rounds` trains three controls with exactly that
round's settings and data order (one `train.Trainer` for everything):

  reinit   IMP's masks, the survivors re-initialised from another key;
  random   as many survivors as IMP, drawn uniformly over the prunable weights, rewound;
  oneshot  one global magnitude prune of the trained dense round 0 to IMP's survivor
           count, rewound.

IMP above reinit says its init matters, above random that its masks do, above oneshot that
pruning iteratively does. Every finished training is added to WORKDIR/study.json at once
(study_reports.record) and skipped on restart, so a killed study continues where it
stopped; study.md and study.png summarise it at the end (study_reports).
"""

import os
import time

from mirl_jax import runtime  # first: it sets XLA's flags before JAX starts

import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position
from absl import flags
from ml_collections import config_flags

from mirl_jax import checkpointing
from mirl_jax import config_keys
from mirl_jax import lottery
from mirl_jax import masks as masks_lib
from mirl_jax import reports
from mirl_jax import study_reports
from mirl_jax import train
from mirl_jax.study_reports import CONTROLS, DENSE, IMP


def run_config(config, workdir: str, seed: int) -> ml_collections.ConfigDict:
  """A run's config: the study's with `seed`, without `study` (a run's resume check would
  count a changed study setting as another experiment), its demo data once in WORKDIR/demo."""
  config = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "study"})
  config.seed = seed
  if config.data.demo:
    config.data.manual_dir = config.data.manual_dir or os.path.join(workdir, "demo", "raw")
    config.data.data_dir = config.data.data_dir or os.path.join(workdir, "demo", "tfds")
  return config


def control_rounds(config) -> list[int]:
  """The pruned rounds where the controls train, checked against lottery.rounds."""
  rounds, last = sorted(set(config.study.control_rounds)), config.lottery.rounds
  if not rounds or rounds[0] < 1 or rounds[-1] > last:
    raise ValueError(
        f"study.control_rounds={tuple(config.study.control_rounds)}: expected pruned rounds "
        f"between 1 and lottery.rounds={last}"
    )
  return rounds


class Study:
  """Per seed: the IMP run, then the controls at each control round, each recorded."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.seeds, self.levels = list(config.study.seeds), control_rounds(config)
    os.makedirs(workdir, exist_ok=True)
    # One compiled step for every training: the seed changes only init and data order.
    self.trainer = train.Trainer(run_config(config, workdir, self.seeds[0]), workdir)

  def run_for(self, seed: int, variant: str) -> train.Run:
    config = run_config(self.config, self.workdir, seed)
    return train.Run(config, os.path.join(self.workdir, f"seed_{seed}", variant), self.trainer)

  def start(self, imp: train.Run, variant: str, r: int, imp_ticket, dense_params):
    """(params, masks) a control starts round r from."""
    alive = masks_lib.count(imp_ticket.params, imp_ticket.masks)["alive"]
    if variant == "reinit":
      fresh = lottery.rewind_target("random", model=imp.model, key=imp.key)
      return lottery.rewind(fresh, imp_ticket.masks, fresh), imp_ticket.masks
    if variant == "random":
      rng = np.random.default_rng([imp.config.seed, r])
      masks = lottery.random_masks(imp_ticket.masks, alive, rng)
    else:
      masks = lottery.one_shot_masks(dense_params, alive)
    keep = self.config.lottery.keep_trained_prompts  # trained prompts come from round 0
    return lottery.rewind(dense_params, masks, imp.rewind_target(), keep_trained=keep), masks

  def train_control(self, imp: train.Run, variant: str, r: int, tickets) -> dict:
    """Trains one control at round r (or takes its saved ticket) and reports it as a round."""
    run, began = self.run_for(imp.config.seed, variant), time.time()
    if r in checkpointing.ticket_indices(run.workdir):  # trained, not yet recorded
      params, masks, _ = checkpointing.restore_ticket(run.workdir, r, model=run.model)
    else:
      params, masks = self.start(imp, variant, r, tickets[r], tickets[0].params)
      params = run.train_round(r, params, masks)
      run.save_ticket(r, params, masks)
    data, seed = self.trainer.data, self.config.eval.seed
    summary = reports.report_round(
        run.workdir, r, run.model, params, masks, data, seed, progress=False
    )
    return study_reports.record_of(variant, imp.config.seed, summary, time.time() - began)

  def run_seed(self, seed: int, done: set) -> None:
    imp = self.run_for(seed, IMP)
    imp.train()
    tickets = {}
    for summary in reports.read_summary(imp.workdir):
      r = summary["round"]
      tickets[r] = checkpointing.restore_ticket(imp.workdir, r, model=imp.model)
      if ((DENSE if r == 0 else IMP), seed, r) not in done:
        record = study_reports.record_of(DENSE if r == 0 else IMP, seed, summary, None)
        study_reports.record(self.workdir, record)
    for r in self.levels:
      for variant in CONTROLS:
        if (variant, seed, r) in done:
          continue
        entry = self.train_control(imp, variant, r, tickets)
        records = study_reports.record(self.workdir, entry)
        lead = study_reports.find(records, IMP, seed, r)["psnr_mean"] - entry["psnr_mean"]
        print(
            f"seed {seed}, round {r} ({100 * entry['remaining']:.2f}% remaining): {variant} "
            f"{entry['psnr_mean']:.2f} dB, IMP ahead by {lead:+.2f} dB ({entry['seconds']:.0f} s)"
        )

  def run(self) -> list[dict]:
    began = time.time()
    for seed in self.seeds:
      done = {(e["variant"], e["seed"], e["round"]) for e in study_reports.read(self.workdir)}
      self.run_seed(seed, done)
    records = study_reports.read(self.workdir)
    study_reports.write_markdown(self.workdir, records, self.config)
    study_reports.plot(self.workdir, records)
    print(
        f"Study done in {time.time() - began:.0f} s this session: {self.workdir}/study.md, "
        f"study.png, {study_reports.STUDY}"
    )
    return records


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
