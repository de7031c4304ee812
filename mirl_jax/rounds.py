"""The iterative-magnitude-pruning round loop, free of data and checkpoints.

Round 0 trains the dense net; each round r >= 1 prunes the trained net,
rewinds the survivors and retrains. Training, rewind targets and whatever
happens between rounds (checkpoints, evaluation, logging) are callables the
caller passes in, so the orchestration decides how to load data, save and
resume; this module only fixes the order of the steps.
"""

import dataclasses
from typing import Any, Callable

from mirl_jax import lottery
from mirl_jax import sparsity

#: (round_index, params, masks) -> trained params.
TrainRound = Callable[[int, Any, Any], Any]
#: round_index -> the params survivors are rewound to (see lottery.rewind_target).
RewindSource = Callable[[int], Any]


@dataclasses.dataclass
class RoundResult:
  """What a finished round hands to hooks (and what `run` returns last)."""
  round_index: int
  params: Any
  masks: Any
  report: list[dict]  # sparsity.report rows, the 'total' row last
  table: str          # sparsity.table(report)
  unused_masks: Any = None  # with a reference pool: the unused convs' masks


def prune_and_rewind(params: Any, masks: Any, target: Any, *, percent: float,
                     scope: str, keep_trained: bool, unused: tuple | None = None
                     ) -> tuple[Any, Any, Any]:
  """One round's start: new masks from the trained params, then the rewound params.

  `unused`: (theta_0, masks) of the reference's six unused convs, pruned in the
  same global pool (lottery.reference_pool); returns their new masks, or None.
  """
  if unused is None:
    masks, unused_masks = lottery.prune(params, masks, percent, scope), None
  else:
    masks, unused_masks = lottery.prune_reference_pool(params, masks, *unused, percent)
  return lottery.rewind(params, masks, target, keep_trained=keep_trained), masks, unused_masks


def run(params: Any, masks: Any, *, train_round: TrainRound, rewind_source: RewindSource,
        num_rounds: int, percent: float = 20.0, scope: str = "global",
        keep_trained: bool = False, start_round: int = 0, unused: tuple | None = None,
        on_round_start: Callable[[int, Any, Any], None] | None = None,
        on_round_end: Callable[[RoundResult], None] | None = None) -> RoundResult:
  """Rounds start_round..num_rounds; returns the last round's result.

  start_round=0: `params` are the initial params, `masks` dense (all True).
  start_round=r>0 (resume): `params`/`masks` are those at the END of round r-1
  (trained, with its masks); round r then prunes, rewinds and trains.
  on_round_start(r, params, masks) runs after pruning and rewinding, before
  training (e.g. to checkpoint the new masks); on_round_end(result) after
  training. Round 0 gets masks=None in train_round: the dense net is not masked.
  `unused` (theta_0 and masks of the unused convs at start_round - 1) puts them
  in the pruning pool, as the official code does; see `prune_and_rewind`.
  """
  if not 0 <= start_round <= num_rounds:
    raise ValueError(f"start_round={start_round}: expected 0 <= start_round <= "
                     f"num_rounds={num_rounds}")
  result = None
  unused_init, unused_masks = (None, None) if unused is None else unused
  for r in range(start_round, num_rounds + 1):
    if r > 0:
      params, masks, unused_masks = prune_and_rewind(
          params, masks, rewind_source(r), percent=percent, scope=scope,
          keep_trained=keep_trained,
          unused=None if unused is None else (unused_init, unused_masks))
    if on_round_start is not None:
      on_round_start(r, params, masks)
    params = train_round(r, params, None if r == 0 else masks)
    rows = sparsity.report(params, masks)
    result = RoundResult(r, params, masks, rows, sparsity.table(rows), unused_masks)
    if on_round_end is not None:
      on_round_end(result)
  return result
