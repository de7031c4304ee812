r"""The winning-ticket study on the demo: IMP against three controls, over three seeds.

  python -m mirl_jax.ticket_study --config configs/ticket_study.py --workdir runs/ticket_study

The demo's network and data, pruned for 11 rounds (0.8^11 = 8.6% of the prunable
weights remain) with each of 3 seeds; the controls train at 5 of those levels, the
lowest 8.6%: 3 x (12 + 3 x 5) = 81 trainings, each with the demo's settings. A killed
study continues where it stopped when the same command is run again.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  # fmt: off
  config = demo.get_config()
  config.lottery.rounds = 11
  # The winning-ticket study (mirl_jax.ticket_study).
  config.study = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),                 # each: the init key and the data order of a whole IMP run
      control_rounds=(3, 5, 7, 9, 11), # where the controls train (pruned rounds of lottery.rounds)
  ))
  # fmt: on
  return config
