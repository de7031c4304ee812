r"""The winning-ticket study on the demo: IMP against three controls, in under an hour on 2 CPU cores.

  python -m mirl_jax.ticket_study --config configs/ticket_study.py --workdir runs/ticket_study

The demo's tiny network and data, pruned for 11 rounds (0.8^11 = 8.6% of the
prunable weights remain). The study trains 45 times (12 IMP rounds, then the
controls (b)-(d) at each of the 11 pruned levels), each for 6 epochs of 45
steps instead of the demo's 8 epochs, to fit the hour. One such training with
its evaluation took 73 s on a 2-core CPU shared with other jobs (~4 steps/s):
about 57 min in all; at the ~5.7 steps/s of a quiet machine, ~50 s and ~39 min.
--config.study.every=2 trains the controls at rounds 2, 4, ..., 10 and 11 only
(30 trainings, about two thirds of the time).
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  # fmt: off
  config = demo.get_config()
  config.lottery.rounds = 11
  config.train.epochs = 6
  # The winning-ticket study (mirl_jax.ticket_study).
  config.study = ml_collections.ConfigDict(dict(
      every=1,  # the controls (b)-(d) train at every `every`-th pruned round and the last
  ))
  # fmt: on
  return config
