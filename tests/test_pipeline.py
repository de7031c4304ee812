"""Tests of mirl_jax.pipeline on the demo data: mixture, patches, determinism, resumption, eval."""

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from mirl_jax import demo_data, images, pipeline

SETS = list(demo_data.DEMO_TRAIN_SETS)


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags.
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  demo_data.build_demo(root / "manual", root / "data")
  return str(root / "data")


def make_config(data_dir, **overrides):
  config = ml_collections.ConfigDict(
      dict(
          data_dir=data_dir,
          train_sets=SETS,
          test_sets=list(demo_data.DEMO_TEST_SETS),
          batch_size=4,
          patch_size=64,
          sigmas=[15, 25, 50],
          repeats={"denoise": 3, "derain": 120, "dehaze": 1},
          worker_count=0,
          read_threads=2,
      )
  )
  config.update(overrides)
  return config


def take(train, count, iterator=None):
  iterator = iterator or train.iterator()
  return [next(iterator) for _ in range(count)], iterator


def assert_same_batches(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ----------------------------------------------------------------------------
# Pure helpers.


def test_crop_to_multiple_drops_floor_half_at_top_left():
  image = np.arange(37 * 50).reshape(37, 50)
  out = pipeline.crop_to_multiple(image, 16)
  assert out.shape == (32, 48)
  assert out[0, 0] == image[2, 1] and out[-1, -1] == image[33, 48]  # 5 rows: 2 top, 3 bottom.
  assert pipeline.crop_to_multiple(image[:32, :48], 16).shape == (32, 48)


def test_dihedral_codes_are_the_eight_distinct_transforms():
  image = np.arange(9).reshape(3, 3)
  outs = {pipeline.dihedral(image, code).tobytes() for code in range(8)}
  assert len(outs) == 8
  np.testing.assert_array_equal(pipeline.dihedral(image, 0), image)
  np.testing.assert_array_equal(pipeline.dihedral(image, 1), np.flipud(image))
  np.testing.assert_array_equal(pipeline.dihedral(image, 3), np.flipud(np.rot90(image)))


def test_add_noise_matches_reference_formula():
  clean = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  noisy = pipeline.add_noise(clean, 25, np.random.default_rng(7))
  noise = np.random.default_rng(7).standard_normal(clean.shape, dtype=np.float32) * 25
  np.testing.assert_array_equal(noisy, np.clip(clean + noise, 0, 255).astype(np.uint8))


def _patcher(records, size=64):
  return pipeline._MakePatch((records,), ("derain",), size)


def test_patch_is_aligned_and_never_identity():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
  make = _patcher([{"clean": images.encode_ppm(clean), "degraded": images.encode_ppm(clean + 7)}])
  seen = set()
  for seed in range(200):
    out = make(np.array([0, 0, 0]), np.random.default_rng(seed))
    np.testing.assert_allclose(out["degraded"] - out["clean"], 7 / 255, atol=1e-6)
    patch = np.rint(out["clean"] * 255).astype(np.uint8)
    codes = [c for c in range(8) if np.array_equal(pipeline.dihedral(clean, c), patch)]
    seen.update(codes)
  assert seen == set(range(1, 8))  # The 7 non-identity transforms, as the reference draws.


def test_small_images_are_reflect_padded():
  clean = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  record = {"clean": images.encode_ppm(clean), "degraded": images.encode_ppm(clean)}
  out = _patcher([record])(np.array([0, 0, 0]), np.random.default_rng(0))
  assert out["clean"].shape == (64, 64, 3)
  values = {tuple(p) for p in np.rint(out["clean"] * 255).astype(np.uint8).reshape(-1, 3)}
  assert values <= {tuple(p) for p in clean.reshape(-1, 3)}  # Only existing pixels.


def test_epoch_lookup_reshuffles_whole_epochs():
  shuffled = grain.MapDataset.source(np.arange(10)).shuffle(seed=3)
  lookup = pipeline._EpochLookup(shuffled, epoch_items=8)
  first, second = [lookup(p) for p in range(8)], [lookup(p) for p in range(8, 16)]
  assert len(set(first)) == 8 and len(set(second)) == 8 and first != second


# ----------------------------------------------------------------------------
# Training.


def test_mixture_follows_repeat_factors(data_dir):
  rows = pipeline.mixture(make_config(data_dir))
  denoise, derain, dehaze = 10, 10, 10  # Demo train sets: 5 photos x 2 variants.
  assert len(rows) == denoise * 3 * 3 + derain * 120 + dehaze * 1
  for sigma in (15, 25, 50):
    assert ((rows[:, 0] == 0) & (rows[:, 2] == sigma)).sum() == denoise * 3
  assert (rows[:, 0] == 1).sum() == derain * 120 and (rows[:, 0] == 2).sum() == dehaze
  assert set(rows[rows[:, 0] > 0, 2]) == {0}


def test_batches_have_expected_layout(data_dir):
  train = pipeline.train_data(make_config(data_dir), seed=0, shard_index=0, shard_count=1)
  assert train.steps_per_epoch == train.mixture_size // 4 == 1300 // 4
  batches, iterator = take(train, 30)
  iterator.close()
  for batch in batches:
    assert batch["degraded"].shape == batch["clean"].shape == (4, 64, 64, 3)
    assert batch["degraded"].dtype == batch["clean"].dtype == np.float32
    assert batch["task_id"].dtype == np.int32 and batch["task_id"].shape == (4,)
    assert 0 <= batch["clean"].min() and batch["clean"].max() <= 1
  task_ids = np.concatenate([b["task_id"] for b in batches])
  sigmas = np.concatenate([b["sigma"] for b in batches])
  assert set(task_ids) >= {0, 1} and set(task_ids) <= {0, 1, 2}
  assert np.all((task_ids == 0) == (sigmas > 0))
  for batch in batches:
    for i in np.flatnonzero(batch["sigma"]):
      residual = (batch["degraded"][i] - batch["clean"][i]) * 255
      assert abs(residual.std() - batch["sigma"][i]) < 0.35 * batch["sigma"][i]


def test_num_epochs_bounds_the_stream(data_dir):
  config = make_config(data_dir, batch_size=8, repeats={"denoise": 1, "derain": 1, "dehaze": 1})
  assert pipeline.steps_per_epoch(config, shard_count=1) == (30 + 10 + 10) // 8
  train = pipeline.train_data(config, seed=0, shard_index=0, shard_count=1, num_epochs=2)
  assert train.steps_per_epoch == 6
  assert sum(1 for _ in train.dataset) == 12


def test_same_seed_same_batches_other_seed_differs(data_dir):
  config = make_config(data_dir)
  first, it1 = take(pipeline.train_data(config, seed=5, shard_index=0, shard_count=1), 3)
  again, it2 = take(pipeline.train_data(config, seed=5, shard_index=0, shard_count=1), 3)
  other, it3 = take(pipeline.train_data(config, seed=6, shard_index=0, shard_count=1), 1)
  assert_same_batches(first, again)
  assert not np.array_equal(first[0]["clean"], other[0]["clean"])
  for it in (it1, it2, it3):
    it.close()


def test_shards_split_the_global_stream(data_dir):
  whole, it = take(
      pipeline.train_data(
          make_config(data_dir, batch_size=8), seed=1, shard_index=0, shard_count=1
      ),
      1,
  )
  it.close()
  half = make_config(data_dir, batch_size=4)
  for index in (0, 1):
    part, it = take(pipeline.train_data(half, seed=1, shard_index=index, shard_count=2), 1)
    it.close()
    np.testing.assert_array_equal(part[0]["clean"], whole[0]["clean"][index::2])
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.train_data(half, seed=1, shard_index=2, shard_count=2)


def test_workers_give_the_same_batches_and_resume(data_dir, tmp_path):
  config = make_config(data_dir)
  reference, it = take(pipeline.train_data(config, seed=2, shard_index=0, shard_count=1), 6)
  it.close()
  workers = pipeline.train_data(
      make_config(data_dir, worker_count=2), seed=2, shard_index=0, shard_count=1
  )
  head, iterator = take(workers, 3)
  assert_same_batches(head, reference[:3])
  state = iterator.get_state()
  tail, _ = take(workers, 3, iterator)
  iterator.close()
  assert_same_batches(tail, reference[3:])
  restored = workers.iterator()
  restored.set_state(state)
  again, _ = take(workers, 3, restored)
  restored.close()
  assert_same_batches(again, reference[3:])


def test_orbax_checkpoint_restores_the_iterator(data_dir, tmp_path):
  train = pipeline.train_data(make_config(data_dir), seed=3, shard_index=0, shard_count=1)
  _, iterator = take(train, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected, _ = take(train, 2, iterator)
  iterator.close()
  fresh = train.iterator()
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  got, _ = take(train, 2, fresh)
  fresh.close()
  assert_same_batches(got, expected)


def test_bad_training_configs(data_dir, tmp_path):
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.train_data(
        make_config(data_dir, batch_size=5000), seed=0, shard_index=0, shard_count=1
    )
  with pytest.raises(ValueError, match="train_sets is empty"):
    pipeline.mixture(make_config(data_dir, train_sets=[]), sizes=[])
  with pytest.raises(FileNotFoundError, match="not prepared"):
    pipeline.train_data(make_config(str(tmp_path)), seed=0, shard_index=0, shard_count=1)


# ----------------------------------------------------------------------------
# Evaluation.


def test_eval_sets_cover_tasks_and_sigmas(data_dir):
  sets = pipeline.eval_sets(make_config(data_dir))
  assert [s.degradation for s in sets] == [
      "denoise_15",
      "denoise_25",
      "denoise_50",
      "derain",
      "dehaze",
  ]
  assert [s.dataset for s in sets] == ["DemoClean"] * 3 + ["DemoRain", "DemoHaze"]


def test_eval_examples_whole_cropped_images_with_fixed_noise(data_dir):
  config = make_config(data_dir)
  by_name = {s.degradation: s for s in pipeline.eval_sets(config)}
  for eval_set in by_name.values():
    examples = list(pipeline.eval_dataset(config, eval_set))
    assert len(examples) == pipeline.eval_size(config, eval_set) == 8
    for example in examples:
      _, h, w, c = example["degraded"].shape
      assert example["clean"].shape == (1, h, w, c) and c == 3
      assert h % 16 == 0 and w % 16 == 0 and max(h, w) in (128, 256)
      assert example["degradation"] == eval_set.degradation
      assert example["dataset"] == eval_set.dataset and example["sigma"] == eval_set.sigma
      assert isinstance(example["name"], str)
  noisy = list(pipeline.eval_dataset(config, by_name["denoise_25"], seed=0))
  again = list(pipeline.eval_dataset(config, by_name["denoise_25"], seed=0))
  other = list(pipeline.eval_dataset(config, by_name["denoise_25"], seed=1))
  np.testing.assert_array_equal(noisy[0]["degraded"], again[0]["degraded"])
  assert not np.array_equal(noisy[0]["degraded"], other[0]["degraded"])
  residual = (noisy[0]["degraded"] - noisy[0]["clean"]) * 255
  assert 18 < residual.std() < 27
  rain = next(iter(pipeline.eval_dataset(config, by_name["derain"])))
  assert not np.array_equal(rain["degraded"], rain["clean"])


def test_the_batch_is_global_and_splits_over_devices_and_processes(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert pipeline.per_process_batch(16) == 8
  with pytest.raises(
      ValueError,
      match=r"config.data.batch_size=12 is the global batch .* "
      r"all 8 devices \(2 process\(es\)\): use a multiple of 8",
  ):
    pipeline.per_process_batch(12)
