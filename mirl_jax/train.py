"""Runs MIR-L: dense round 0, then prune, rewind and retrain, round after round.

Everything a preempted run needs to continue lives in the workdir: one ticket
per finished round (tickets/<round>), and mid-round checkpoints (params,
masks, optimizer and data-iterator state) under checkpoints/. Restarting with
the same workdir resumes from the latest of them and ends with the same
params and masks as an uninterrupted run. The initial params are re-created
from config.seed, unless the run's theta_0 was imported (theta_0/).
"""

import json
import os
from pathlib import Path

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from mirl_jax import checkpointing
from mirl_jax import convert
from mirl_jax import evaluate
from mirl_jax import images
from mirl_jax import lottery
from mirl_jax import masks as masks_lib
from mirl_jax import models
from mirl_jax import pipeline
from mirl_jax import reports
from mirl_jax import restore
from mirl_jax import rounds
from mirl_jax import schedule
from mirl_jax import sparsity
from mirl_jax import train_step


# What a resumed run may change: how it logs, checkpoints, reads and evaluates,
# and how many rounds it runs. Anything else would mix two experiments.
_MAY_CHANGE = ("train.log_every_steps", "train.checkpoint_every_steps", "lottery.rounds",
               "train.microbatches", "model.scan_blocks", "model.remat",
               "data.manual_dir", "data.data_dir", "data.worker_count", "data.read_threads",
               "data.test_sets", "eval.", "restore.", "export.", "import_from", "import_init")


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


# Keys added since a run may have saved its config, with the value its code had.
_ADDED = {"model.dtype": "float32", "model.precision": "highest", "model.scan_blocks": True,
          "model.remat": "none", "train.microbatches": 1, "lottery.reference_pool": False}


def config_changes(saved: dict, current: dict, per_device_batch: bool = False) -> list[str]:
  """'key: saved -> current' for each key that differs and may not change on resume.

  per_device_batch: `saved` is from before data.batch_size was the global batch;
  its batch is compared as this host's global batch (per device x devices).
  """
  old, new = dict(_ADDED), _flat(current)
  old.update(_flat(saved))
  if per_device_batch:
    old["data.batch_size"] *= jax.device_count()
  return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}"
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not k.startswith(_MAY_CHANGE)]


def _host(tree):
  """Numpy copies of (replicated) arrays: safe from donation and multi-host."""
  return jax.tree.map(
      lambda x: np.array(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def _imported_theta_0(workdir: str, model, reference_pool: bool):
  """(params, unused convs) of an imported theta_0, or None for a run made here.

  Refuses a workdir whose ticket was imported without its theta_0, before any
  data are read: its rounds would rewind to an init that has nothing to do with it.
  """
  theta_0 = checkpointing.restore_theta_0(workdir, model)
  tickets = checkpointing.ticket_indices(workdir)
  if theta_0 is None and tickets:
    source = checkpointing.ticket_meta(workdir, min(tickets)).get("imported_from")
    if source:
      raise ValueError(
          f"{workdir} holds a ticket imported from {source} without its run's theta_0, which "
          "every round rewinds to: import it again into a new workdir with "
          f"--config.import_from={source} --config.import_init=/path/to/initial_state_dict.pth")
  if theta_0 is not None and reference_pool and theta_0[1] is None:
    raise ValueError(f"the theta_0 imported into {workdir} ({theta_0[2]['imported_from']}) has "
                     "no unused convs (chnl_reduce1, ...) for lottery.reference_pool=True")
  return None if theta_0 is None else theta_0[:2]


class Run:
  """One IMP run in a workdir; `train()` starts or resumes it."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.model = models.PromptIR(**config.model)
    self.theta_0 = _imported_theta_0(workdir, self.model, config.lottery.reference_pool)
    self.data = pipeline.run_data_config(config, workdir)
    pipeline.ensure_demo_data(self.data)
    self.mesh = train_step.make_mesh()
    self.main = jax.process_index() == 0
    self.key = jax.random.key(config.seed)
    self.run_config = json.loads(config.to_json())
    # With the config, a checkpoint says how to re-create its run and its theta_0.
    self.meta = dict(config=self.run_config, batch="global",
                     init_key=np.asarray(jax.random.key_data(self.key)).tolist())
    self.steps_per_epoch = pipeline.steps_per_epoch(self.data)
    self.steps_per_round = config.train.epochs * self.steps_per_epoch
    self.checkpoints = checkpointing.TrainCheckpoints(workdir)
    self.tb = reports.TensorBoard(workdir, self.main)
    self.step_fn = train_step.make_train_step(self.mesh,
                                              microbatches=config.train.get("microbatches", 1))
    self._late = None
    self._lr_tx = None

  # -- rewinding -------------------------------------------------------------

  def init_params(self):
    if self.theta_0 is not None:
      return self.theta_0[0]
    return models.init_params(self.model, self.key)

  def unused_init(self):
    """theta_0 of the reference's unused convs (lottery.reference_pool)."""
    if self.theta_0 is not None:
      return self.theta_0[1]
    return convert.unused_init(self.model, self.key)

  def rewind_source(self, round_index: int):
    del round_index
    mode = self.config.lottery.rewind
    if mode == "init":
      return self.init_params()
    if mode == "late" and self._late is None:
      self._late = checkpointing.restore_ticket(
          self.workdir, 0, folder=checkpointing.REWIND).params
    return lottery.rewind_target(mode, model=self.model, key=self.key,
                                 late_params=self._late)

  # -- one round -------------------------------------------------------------

  def _optimizer(self):
    """Every round's schedule and AdamW: built once, since the optimizer is static
    in the train state and a new one would re-trace and re-compile the step."""
    if self._lr_tx is None:
      cfg = self.config.train
      lr = schedule.optax_schedule(cfg.learning_rate, cfg.warmup_epochs, cfg.epochs,
                                   self.steps_per_epoch, per_epoch=cfg.lr_per_epoch)
      self._lr_tx = lr, train_step.make_optimizer(lr, weight_decay=cfg.weight_decay)
    return self._lr_tx

  def train_round(self, r: int, params, masks):
    """Trains round r from `params` or from its mid-round checkpoint."""
    lr, tx = self._optimizer()
    state = train_step.create_train_state(self.model, params, tx)
    stored_masks = masks if masks is not None else masks_lib.dense_masks(params)
    iterator = pipeline.train_data(self.data, seed=self.config.seed + r,
                                   num_epochs=self.config.train.epochs).iterator()
    start = 0
    saved = self.checkpoints.latest_meta()
    if saved is not None and saved["round"] == r:
      state, restored_masks = self.checkpoints.restore(saved["step"], state, iterator)
      if not all(np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(restored_masks), jax.tree.leaves(stored_masks))):
        raise ValueError(f"The checkpoint of round {r} in {self.workdir} has other masks "
                         "than its tickets give: was the config changed?")
      start = saved["step_in_round"]
      logging.warning("Resuming round %d at step %d of %d", r, start, self.steps_per_round)
    state = train_step.replicate(self.mesh, state)
    # Round 0 runs the masked step too, with all-True masks: the same arithmetic
    # (where(True, x, 0) is x), and one compiled step for the whole run, not two.
    device_masks = train_step.replicate(self.mesh, stored_masks)
    bar = tqdm(total=self.steps_per_round, initial=start, desc=f"round {r}", unit="step",
               disable=not self.main, dynamic_ncols=True)
    global_base = r * self.steps_per_round
    batches = ((b["degraded"], b["clean"]) for b in
               (next(iterator) for _ in range(start, self.steps_per_round)))

    def after_step(step, state, metrics):
      done = step + 1
      if r == 0 and self.config.lottery.rewind == "late" and done == self.config.lottery.late_step:
        checkpointing.save_ticket(self.workdir, 0, _host(state.params),
                                  masks_lib.dense_masks(params), {"step": done},
                                  folder=checkpointing.REWIND)
      if done % self.config.train.log_every_steps == 0 or done == self.steps_per_round:
        loss = float(metrics["loss"])
        bar.set_postfix(loss=f"{loss:.4f}")
        self.tb.scalars(global_base + done, {"train/loss": loss, "train/lr": lr(step),
                                              "train/grad_norm": float(metrics["grad_norm"])})
      if done % self.config.train.checkpoint_every_steps == 0 and done < self.steps_per_round:
        train_step.check_finite(metrics, r, step)  # never checkpoint a NaN
        self.checkpoints.save(global_base + done, _host(state), stored_masks, iterator,
                              dict(self.meta, round=r, step_in_round=done))
      bar.update(1)

    state = train_step.run_steps(self.step_fn, self.mesh, state, device_masks, batches,
                                 round_index=r, callback=after_step)
    bar.close()
    if hasattr(iterator, "close"):
      iterator.close()
    return _host(state.params)

  # -- between rounds ---------------------------------------------------------

  def end_round(self, result: rounds.RoundResult) -> None:
    """Ticket first (it marks the round done), then evaluation and reports."""
    r = result.round_index
    counts = masks_lib.count(result.params, result.masks)
    if result.unused_masks is not None:  # before the ticket: a ticket means all is saved
      unused = self.unused_init()
      checkpointing.save_unused(self.workdir, r, lottery.rewind(unused, result.unused_masks,
                                                                unused), result.unused_masks)
    checkpointing.save_ticket(self.workdir, r, result.params, result.masks,
                              dict(self.meta, round=r, **counts))
    self.report_round(r, result.params, result.masks)

  def report_round(self, r: int, params, masks) -> None:
    if not self.main:  # evaluation is local work: one process does it for all
      return
    counts = masks_lib.count(params, masks)
    forward = restore.make_forward(self.model, params)
    results = evaluate.evaluate(forward, self.data, seed=self.config.eval.seed)
    rows = sparsity.report(params, masks)
    sparsity_dir = os.path.join(self.workdir, "sparsity")
    os.makedirs(sparsity_dir, exist_ok=True)
    images.write_atomic(Path(sparsity_dir) / f"round_{r:02d}.txt",
                        (sparsity.table(rows) + "\n").encode())
    print(f"\nRound {r}: {sparsity.summary(rows)} (per layer: {sparsity_dir}/round_{r:02d}.txt)")
    print(evaluate.format_table(results))
    eval_dir = os.path.join(self.workdir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    evaluate.write_reports(results, eval_dir, stem=f"round_{r:02d}")
    entries = reports.update_summary(self.workdir, reports.summary_entry(r, counts, results))
    reports.plot_psnr(self.workdir, entries)
    reports.write_samples(forward, self.data, self.config.eval.seed,
                          os.path.join(self.workdir, f"samples_round_{r:02d}.png"))
    self.tb.scalars(r, {"sparsity/remaining": counts["remaining"],
                        **{f"eval/{e['degradation']}/{e['dataset']}/{k}": e[k]
                           for e in results for k in ("psnr", "ssim")}})
    self.tb.flush()

  # -- the run ----------------------------------------------------------------

  def check_config(self, done: list[int]) -> None:
    """Refuses to continue a run with a config that changes the experiment."""
    saved = self.checkpoints.latest_meta()
    if saved is None and done:
      saved = checkpointing.ticket_meta(self.workdir, max(done))
    if saved is None or "config" not in saved:  # fresh, or imported tickets
      return
    per_device = saved.get("batch") != "global"  # saved when the batch was per device
    changes = config_changes(saved["config"], self.run_config, per_device_batch=per_device)
    hint = ""
    if per_device and any(c.startswith("data.batch_size:") for c in changes):
      b, n = saved["config"]["data"]["batch_size"], jax.device_count()
      hint = (f" (its data.batch_size={b} counted per device; data.batch_size is now the "
              f"global batch: --config.data.batch_size={b * n} continues it on {n} devices)")
    if changes:
      raise ValueError(
          f"{self.workdir} holds a run made with another config (changed: " +
          "; ".join(changes) + ")" + hint +
          ": resume with the saved values, or use a new --workdir")

  def train(self) -> rounds.RoundResult | None:
    done = checkpointing.ticket_indices(self.workdir)
    self.check_config(done)
    reported = {e["round"] for e in reports.read_summary(self.workdir)}
    for r in done:  # a run stopped between its ticket and its reports
      if r not in reported:
        params, masks, _ = checkpointing.restore_ticket(self.workdir, r, model=self.model)
        self.report_round(r, params, masks)
    last = max(done) if done else -1
    if last >= self.config.lottery.rounds:
      logging.warning("All %d rounds are done in %s", last + 1, self.workdir)
      return None
    if last < 0:
      params = self.init_params()
      masks = masks_lib.dense_masks(params)
    else:
      params, masks, _ = checkpointing.restore_ticket(self.workdir, last, model=self.model)
    cfg = self.config.lottery
    return rounds.run(params, masks, train_round=self.train_round,
                      rewind_source=self.rewind_source, num_rounds=cfg.rounds,
                      percent=cfg.percent, scope=cfg.scope,
                      keep_trained=cfg.keep_trained_prompts, start_round=last + 1,
                      unused=self._unused_pool(last) if cfg.reference_pool else None,
                      on_round_end=self.end_round)

  def _unused_pool(self, last: int) -> tuple:
    """(theta_0, masks after ticket `last`) of the unused convs, for the reference's pool."""
    init = self.unused_init()
    if last < 0:
      return init, masks_lib.dense_masks(init)
    stored = checkpointing.restore_unused(self.workdir, last)
    if stored is None:
      raise ValueError(f"ticket {last} of {self.workdir} was saved without the unused convs "
                       "that lottery.reference_pool=True prunes (unused/): the run did not "
                       "start with it, and cannot continue with it")
    return init, stored[1]


def train_and_evaluate(config, workdir: str):
  return Run(config, workdir).train()
