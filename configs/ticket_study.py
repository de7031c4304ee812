r"""The winning-ticket study: IMP against three controls, over three seeds, on blind denoising.

  python -m mirl_jax.ticket_study --config configs/ticket_study.py --workdir runs/ticket_study

The demo's network and photographs, trained on one task, Gaussian denoising at sigma
15/25/50 (blind: one network for the three): in 360 steps per round (8 epochs of 45, the
demo's schedule) it comes near convergence there (about 6 dB above its noisy inputs, the
loss flat within noise over the round's last 20%), where the five-task demo is still
learning, so the variants' differences are not drowned in undertraining. Pruned for 11
rounds (0.8^11 = 8.6% of the prunable weights remain) with each of 3 seeds; the controls
train at 5 of those levels, the lowest 8.6%: 3 x (12 + 3 x 5) = 81 trainings. A killed
study continues where it stopped when the same command is run again.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  # fmt: off
  config = demo.get_config()
  config.data.update(dict(train_sets=("denoise/DemoClean",), test_sets=("denoise/DemoClean",),
                          repeats=dict(denoise=12, derain=12, dehaze=12)))  # 360 patches an epoch
  config.train.clip_grad_norm = 0.0  # the reference's optimizer, unclipped
  config.lottery.rounds = 11
  # The winning-ticket study (mirl_jax.ticket_study).
  config.study = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),                 # each: the init key and the data order of a whole IMP run
      control_rounds=(3, 5, 7, 9, 11), # where the controls train (pruned rounds of lottery.rounds)
  ))
  # fmt: on
  return config
