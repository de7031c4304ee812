"""Runs MIR-L: dense round 0, then prune, rewind and retrain, round after round.

A `Trainer` holds what a config fixes for every training (model, mesh, data,
schedule, optimizer, compiled step); a `Run` is one IMP run in a workdir, and
its `train()` is the round loop. Everything a preempted run needs to continue
lives in the workdir: one ticket per finished round (tickets/<round>), and
mid-round checkpoints (params, masks, optimizer and data-iterator state) under
checkpoints/. Restarting with the same workdir resumes from the latest of them
and ends with the same params and masks as an uninterrupted run. The initial params are re-created
from config.seed, unless the run's theta_0 was imported (theta_0/).
"""

import json

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from mirl_jax import checkpointing
from mirl_jax import train_checkpoints
from mirl_jax import convert
from mirl_jax import loss_curve
from mirl_jax import lottery
from mirl_jax import masks as masks_lib
from mirl_jax import models
from mirl_jax import pipeline
from mirl_jax import reports
from mirl_jax import resources
from mirl_jax import resume
from mirl_jax import scan_layout
from mirl_jax import schedule
from mirl_jax import train_step


def _host(tree):
  """Numpy copies of (replicated) arrays: safe from donation and multi-host."""
  return jax.tree.map(
      lambda x: np.array(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree
  )


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
          f"--config.import_from={source} --config.import_init=/path/to/initial_state_dict.pth"
      )
  if theta_0 is not None and reference_pool and theta_0[1] is None:
    raise ValueError(
        f"the theta_0 imported into {workdir} ({theta_0[2]['imported_from']}) has "
        "no unused convs (chnl_reduce1, ...) for lottery.reference_pool=True"
    )
  return None if theta_0 is None else theta_0[:2]


class Trainer:
  """What a config fixes for every training it runs: a run's rounds, or a study's.

  The optimizer is static in the train state, so one Trainer means one compiled
  step for all of them.
  """

  def __init__(self, config, data_workdir: str):
    cfg = config.train
    self.config = config
    self.model = models.PromptIR(**config.model)
    self.data = pipeline.run_data_config(config, data_workdir)
    pipeline.ensure_demo_data(self.data)
    self.mesh = train_step.make_mesh()
    self.steps_per_epoch = pipeline.steps_per_epoch(self.data)
    self.steps_per_round = cfg.epochs * self.steps_per_epoch
    self.lr = schedule.optax_schedule(
        cfg.learning_rate,
        cfg.warmup_epochs,
        cfg.epochs,
        self.steps_per_epoch,
        per_epoch=cfg.lr_per_epoch,
    )
    self.tx = train_step.make_optimizer(
        self.lr, weight_decay=cfg.weight_decay, clip_grad_norm=cfg.get("clip_grad_norm", 0.0)
    )
    self.step_fn = train_step.make_train_step(self.mesh, microbatches=cfg.get("microbatches", 1))

  def round_data(self, seed: int, r: int):
    """Round r's data order in a run of `seed`: the same in the run, its resumption and a
    study's controls (a study trains several seeds with one Trainer)."""
    return pipeline.train_data(
        self.data, seed=seed + r, num_epochs=self.config.train.epochs
    ).iterator()


class Run:
  """One IMP run in a workdir: its checkpoints, tickets, reports and logs."""

  def __init__(self, config, workdir: str, trainer: Trainer | None = None, check_lock=None):
    self.config, self.workdir = config, workdir
    # Before every save: raises if another run took the workdir over (workdir_lock.one_run).
    self.check_lock = check_lock or (lambda: None)
    self.model = trainer.model if trainer is not None else models.PromptIR(**config.model)
    # Checked before a Trainer reads any data.
    self.theta_0 = _imported_theta_0(workdir, self.model, config.lottery.reference_pool)
    self.trainer = trainer or Trainer(config, workdir)
    self.is_main = jax.process_index() == 0
    self.key = jax.random.key(config.seed)
    # With the config, a checkpoint says how to re-create its run and its theta_0.
    self.meta = dict(
        config=json.loads(config.to_json()),
        batch="global",
        init_key=np.asarray(jax.random.key_data(self.key)).tolist(),
    )
    self.checkpoints = train_checkpoints.TrainCheckpoints(workdir)
    self.tb = reports.TensorBoard(workdir, self.is_main)
    self._late = None

  # --------------------------------------------------------------------------
  # Where survivors go back to.

  def init_params(self):
    if self.theta_0 is not None:
      return self.theta_0[0]
    return models.init_params(self.model, self.key)

  def unused_init(self):
    """theta_0 of the reference's unused convs (lottery.reference_pool)."""
    if self.theta_0 is not None:
      return self.theta_0[1]
    return convert.unused_init(self.model, self.key)

  def rewind_target(self):
    """The params every pruned round rewinds to (config.lottery.rewind)."""
    mode = self.config.lottery.rewind
    if mode == "init":
      return self.init_params()
    if mode == "late" and self._late is None:
      self._late = checkpointing.restore_ticket(self.workdir, 0, folder=checkpointing.REWIND).params
    return lottery.rewind_target(mode, model=self.model, key=self.key, late_params=self._late)

  # --------------------------------------------------------------------------
  # One round.

  def train_round(self, r: int, params, masks):
    """Trains round r from `params` (or from its mid-round checkpoint); returns numpy params.

    Round 0 runs the masked step too, with all-True masks: the same arithmetic
    (where(True, x, 0) is x), and one compiled step for the whole run, not two.
    """
    trainer, cfg = self.trainer, self.config.train
    steps = trainer.steps_per_round
    state = train_step.create_train_state(trainer.model, params, trainer.tx)
    start, curve, losses = 0, [], []  # curve: (step, mean loss since the last point)
    make_iterator = lambda: trainer.round_data(self.config.seed, r)
    restored = self.checkpoints.restore_latest(r, state, make_iterator)
    if restored is None:
      iterator = make_iterator()
    else:
      state, restored_masks, saved, iterator = restored
      if not all(
          np.array_equal(a, b)
          for a, b in zip(jax.tree.leaves(restored_masks), jax.tree.leaves(masks))
      ):
        raise ValueError(
            f"The checkpoint of round {r} in {self.workdir} has other masks "
            "than its tickets give: was the config changed?"
        )
      start, curve = saved["step_in_round"], saved.get("loss_curve", [])
      losses = list(saved.get("loss_pending", []))  # so the curve is that of an unbroken round
      logging.warning("Resuming round %d at step %d of %d", r, start, steps)
    # The step's layout (scan_layout): each run of blocks stacked, unstacked for every save.
    model = trainer.model
    state = train_step.replicate(trainer.mesh, scan_layout.stack_state(_host(state), model))
    bar = tqdm(
        total=steps,
        initial=start,
        desc=f"round {r}",
        unit="step",
        disable=not self.is_main,
        dynamic_ncols=True,
    )
    # run_steps calls after_step before it pulls the next batch, so a checkpoint
    # saves the iterator positioned at the first batch not yet trained on.
    batches = ((b["degraded"], b["clean"]) for b in (next(iterator) for _ in range(start, steps)))

    def after_step(step, state, metrics):
      trained = step + 1  # steps of this round done
      imp = self.config.lottery
      if r == 0 and imp.rewind == "late" and trained == imp.late_step:
        checkpointing.save_ticket(
            self.workdir,
            0,
            scan_layout.unstack(_host(state.params), model),
            masks,
            {"step": trained},
            folder=checkpointing.REWIND,
        )
      losses.append(metrics["loss"])  # read at the next log point: no wait on the device
      if trained % cfg.log_every_steps == 0 or trained == steps:
        loss = float(np.mean([float(x) for x in losses]))
        losses.clear()
        curve.append((trained, loss))
        bar.set_postfix(loss=f"{loss:.4f}")
        self.tb.scalars(
            r * steps + trained,
            {
                "train/loss": loss,
                "train/lr": trainer.lr(step),
                "train/grad_norm": float(metrics["grad_norm"]),
            },
        )
      if trained % cfg.checkpoint_every_steps == 0 and trained < steps:
        train_step.check_finite(metrics, r, step)  # never checkpoint a NaN
        self.check_lock()
        self.checkpoints.save(
            r * steps + trained,
            scan_layout.unstack_state(_host(state), model),
            masks,
            iterator,
            dict(
                self.meta,
                round=r,
                step_in_round=trained,
                loss_curve=curve,
                loss_pending=[float(x) for x in losses],  # since the last point of the curve
            ),
        )
      bar.update(1)

    try:
      state = train_step.run_steps(
          trainer.step_fn,
          trainer.mesh,
          state,
          train_step.replicate(trainer.mesh, scan_layout.stack(masks, model)),
          batches,
          round_index=r,
          callback=after_step,
      )
    finally:  # before any error's message, not after it at exit
      bar.close()
      if hasattr(iterator, "close"):
        iterator.close()
    if self.is_main:
      loss_curve.write(self.workdir, r, curve, steps)
    return scan_layout.unstack(_host(state.params), model)

  def save_ticket(self, r: int, params, masks, unused_masks=None) -> None:
    """Round r's ticket: it marks the round done, so whatever goes with it is saved first."""
    self.check_lock()
    if unused_masks is not None:
      unused = self.unused_init()
      checkpointing.save_unused(
          self.workdir, r, lottery.rewind(unused, unused_masks, unused), unused_masks
      )
    checkpointing.save_ticket(
        self.workdir, r, params, masks, dict(self.meta, round=r, **masks_lib.count(params, masks))
    )

  def report(self, r: int, params, masks) -> None:
    if self.is_main:  # evaluation is local work: one process does it for all
      reports.report_round(
          self.workdir,
          r,
          self.model,
          params,
          masks,
          self.trainer.data,
          self.config.eval.seed,
          tb=self.tb,
      )
    resources.record(self.workdir, r)  # every process its own file: growth over rounds

  # --------------------------------------------------------------------------
  # The run.

  def check_config(self, saved_rounds: list[int]) -> None:
    """Refuses to continue a run with a config that changes the experiment."""
    saved = self.checkpoints.latest_meta()
    if saved is None and saved_rounds:
      saved = checkpointing.ticket_meta(self.workdir, max(saved_rounds))
    resume.check(self.workdir, saved, self.meta["config"])

  def _unused_masks(self, last: int):
    """The unused convs' masks after ticket `last`, for the reference's pool."""
    if last < 0:
      return masks_lib.dense_masks(self.unused_init())
    stored = checkpointing.restore_unused(self.workdir, last)
    if stored is None:
      raise ValueError(
          f"ticket {last} of {self.workdir} was saved without the unused convs "
          "that lottery.reference_pool=True prunes (unused/): the run did not "
          "start with it, and cannot continue with it"
      )
    return stored[1]

  def train(self) -> checkpointing.Ticket | None:
    """The IMP loop; returns the last round's ticket (None if all rounds were done).

    Starting or resuming:
      1. refuse a config that would change the experiment;
      2. report the rounds whose ticket was saved but whose reports were not;
      3. start after the newest ticket, from it (none: theta_0, dense masks);
         a round that was checkpointed mid-way resumes there (train_round).
    """
    cfg = self.config.lottery
    saved_rounds = checkpointing.ticket_indices(self.workdir)
    self.check_config(saved_rounds)  # 1
    reported = {e["round"] for e in reports.read_summary(self.workdir)}
    for r in sorted(set(saved_rounds) - reported):  # 2
      ticket = checkpointing.restore_ticket(self.workdir, r, model=self.model)
      self.report(r, ticket.params, ticket.masks)
    last = max(saved_rounds, default=-1)  # 3
    if last >= cfg.rounds:
      logging.warning("All %d rounds are done in %s", last + 1, self.workdir)
      return None
    if last < 0:
      params = self.init_params()
      masks = masks_lib.dense_masks(params)
    else:
      params, masks, _ = checkpointing.restore_ticket(self.workdir, last, model=self.model)
    unused_masks = self._unused_masks(last) if cfg.reference_pool else None

    for r in range(last + 1, cfg.rounds + 1):
      if r > 0:  # prune the trained net, rewind the survivors
        if unused_masks is None:
          masks = lottery.prune(params, masks, cfg.percent, cfg.scope)
        else:
          masks, unused_masks = lottery.prune_reference_pool(
              params, masks, self.unused_init(), unused_masks, cfg.percent
          )
        params = lottery.rewind(
            params, masks, self.rewind_target(), keep_trained=cfg.keep_trained_prompts
        )
      params = self.train_round(r, params, masks)
      self.save_ticket(r, params, masks, unused_masks)
      self.report(r, params, masks)
    return checkpointing.Ticket(params, masks, dict(self.meta, round=cfg.rounds))


def train_and_evaluate(config, workdir: str, check_lock=None):
  return Run(config, workdir, check_lock=check_lock).train()
