r"""MIR-L's single-task variant: Dehazing alone (OTS; tests SOTS).

  python -m mirl_jax.main --config configs/dehaze.py --workdir runs/dehaze \
    --config.data.manual_dir=data/mirl
"""

from configs import all_in_one


def get_config():
  config = all_in_one.get_config()
  config.data.train_sets = ("dehaze/OTS",)
  config.data.test_sets = ("dehaze/SOTS",)
  return config
