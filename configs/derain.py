r"""MIR-L's single-task variant: Deraining alone (Rain100L).

  python -m mirl_jax.main --config configs/derain.py --workdir runs/derain \
    --config.data.manual_dir=data/mirl
"""

from configs import all_in_one


def get_config():
  config = all_in_one.get_config()
  config.data.train_sets = ("derain/Rain100L",)
  config.data.test_sets = ("derain/Rain100L",)
  return config
