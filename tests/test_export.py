"""Tickets out as the reference's state dict: what its strict load_state_dict accepts."""

import copy
import os

import jax
import numpy as np
import pytest

from conftest import REFERENCE, TINY
from configs import all_in_one
from mirl_jax import checkpointing
from mirl_jax import config_keys
from mirl_jax import convert
from mirl_jax import export
from mirl_jax import models


def _export(workdir, output, config=None, **options):
  config = copy.deepcopy(config or all_in_one.get_config())
  config.export.update(dict(output=str(output), **options))
  config_keys.validate(config, "export")
  export.export_ticket(config, str(workdir))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A workdir holding the reference fixture's ticket, imported."""
  workdir = tmp_path_factory.mktemp("imported")
  convert.import_checkpoint(str(REFERENCE), str(workdir), models.PromptIR())
  return workdir


def test_an_imported_ticket_goes_back_bit_for_bit(
    imported, tmp_path, reference_state_dict, reference_network
):
  torch = pytest.importorskip("torch")
  _export(imported, tmp_path / "ticket.pth")
  exported = torch.load(tmp_path / "ticket.pth", weights_only=True)
  assert set(exported) == set(reference_state_dict)  # the six unused convs included
  for name, value in reference_state_dict.items():
    assert np.array_equal(exported[name].numpy(), value), name
  net = reference_network.PromptIR(decoder=True)
  assert not net.load_state_dict(exported, strict=True).missing_keys


def test_lightning_and_npz_layouts(imported, tmp_path, reference_state_dict, reference_network):
  torch = pytest.importorskip("torch")
  pl = pytest.importorskip("lightning.pytorch")
  _export(imported, tmp_path / "ticket.ckpt", lightning=True)

  class MIRL(pl.LightningModule):  # the reference's module: its network as `net`

    def __init__(self):
      super().__init__()
      self.net = reference_network.PromptIR(decoder=True)

  module = MIRL.load_from_checkpoint(tmp_path / "ticket.ckpt", strict=True)
  weight = module.net.encoder_level1[0].attn.qkv.weight.detach().numpy()
  assert np.array_equal(weight, reference_state_dict["encoder_level1.0.attn.qkv.weight"])

  _export(imported, tmp_path / "ticket.npz", format="npz")
  with np.load(tmp_path / "ticket.npz") as data:
    assert set(data.files) == set(reference_state_dict)
    assert all(np.array_equal(data[k], reference_state_dict[k]) for k in data.files)
  params, _ = convert.params_from_torch(convert.load_state_dict(str(tmp_path / "ticket.npz")))
  ticket, _, _ = checkpointing.restore_ticket(str(imported), 0)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ticket)))


def test_a_run_made_here_exports_its_unused_convs_at_init(tmp_path):
  model = TINY
  key = jax.random.key(7)
  params = models.init_params(model, key)
  checkpointing.save_ticket(
      str(tmp_path / "w"),
      0,
      params,
      jax.tree.map(lambda _: None, params),
      {"init_key": np.asarray(jax.random.key_data(key)).tolist()},
  )
  sd = export.state_dict(
      params,
      export.unused_convs(
          str(tmp_path / "w"), 0, model, checkpointing.ticket_meta(str(tmp_path / "w"), 0), seed=0
      ),
  )
  want = convert.unused_init(model, key)
  for name, (cin, cout) in convert.unused_shapes(model).items():
    w = sd[f"{name}.weight"]
    assert w.shape == (cout, cin, 1, 1)
    assert np.array_equal(w, want[name]["kernel"].transpose(3, 2, 0, 1))
    assert np.abs(w).max() <= cin**-0.5 and w.std() > 0.45 * cin**-0.5  # U(-b, b): 0.58 b
  again = convert.unused_init(model, jax.random.key(8))
  assert not np.array_equal(again["chnl_reduce1"]["kernel"], want["chnl_reduce1"]["kernel"])


def test_outputs_are_checked_first_and_never_half_written(imported, tmp_path, monkeypatch):
  kept = tmp_path / "kept.npz"
  kept.write_bytes(b"an earlier export")
  with pytest.raises(ValueError, match=f"export.output={kept} exists"):
    _export(imported, kept, format="npz")
  with pytest.raises(
      ValueError,
      match=r"export.output=.*t.pth: expected a name ending " r"in .npz for export.format='npz'",
  ):
    _export(imported, tmp_path / "t.pth", format="npz")
  with pytest.raises(ValueError, match="does not exist"):
    _export(imported, tmp_path / "missing" / "t.npz", format="npz")
  with pytest.raises(
      ValueError, match="export.lightning=True: expected False with export.format='npz'"
  ):
    _export(imported, tmp_path / "t.npz", format="npz", lightning=True)

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "savez", disk_full)
  with pytest.raises(OSError, match="No space left"):
    _export(imported, kept, format="npz", overwrite=True)
  assert kept.read_bytes() == b"an earlier export"
  assert sorted(os.listdir(tmp_path)) == ["kept.npz"]


def _reference_rule(state_dict: dict, percent: float = 20.0) -> dict:
  """The official code's global rule over a state dict (../shared/REFERENCE.md, section 2):
  every tensor named "weight", alive = non-zero, numpy's percentile."""
  weights = {k: np.asarray(v) for k, v in state_dict.items() if "weight" in k}
  alive = np.concatenate([np.abs(w[w != 0]) for w in weights.values()])
  threshold = np.percentile(alive, percent)
  return {k: (w != 0) & ~(np.abs(w) < threshold) for k, w in weights.items()}


def _masks_by_torch_name(workdir, index) -> dict:
  _, masks, _ = checkpointing.restore_ticket(str(workdir), index)
  unused = checkpointing.restore_unused(str(workdir), index)
  return {**convert.params_to_torch(masks), **convert.params_to_torch(unused[1])}


@pytest.mark.slow
def test_a_reference_run_continues_here_and_goes_back(tmp_path, reference_network):
  """theta_0 and a pruned checkpoint of the reference in; two rounds here with its pool;
  the export loads strictly into the reference and computes our outputs."""
  torch = pytest.importorskip("torch")
  from absl import flags  # pylint: disable=import-outside-toplevel
  from mirl_jax import restore, train  # pylint: disable=import-outside-toplevel
  from reference_width_config import get_config  # pylint: disable=import-outside-toplevel

  flags.FLAGS.mark_as_parsed()
  config = get_config()
  torch.manual_seed(0)
  net = reference_network.PromptIR(decoder=True, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
  theta_0 = {k: v.numpy().copy() for k, v in net.state_dict().items()}
  torch.save(net.state_dict(), tmp_path / "initial_state_dict.pth")
  # A reference checkpoint after one pruned round: trained, pruned by its rule, unused
  # convs pruned too but never trained.
  rng = np.random.default_rng(0)
  trained = {
      k: v
      + (
          0
          if k.split(".")[0] in convert.UNUSED
          else rng.normal(0, 0.01, v.shape).astype(np.float32)
      )
      for k, v in theta_0.items()
  }
  masks = _reference_rule(trained)
  ckpt = {
      k: torch.from_numpy(np.where(masks[k], v, 0) if k in masks else v) for k, v in trained.items()
  }
  torch.save({"state_dict": {"net." + k: v for k, v in ckpt.items()}}, tmp_path / "mirl.ckpt")

  workdir = tmp_path / "run"
  convert.import_checkpoint(
      str(tmp_path / "mirl.ckpt"),
      str(workdir),
      models.PromptIR(**config.model),
      str(tmp_path / "initial_state_dict.pth"),
  )
  train.train_and_evaluate(config, str(workdir))
  assert checkpointing.ticket_indices(str(workdir)) == [0, 1, 2]

  # Each round's masks are the reference rule's over the ticket before it, unused convs
  # included (exported: what the reference would hold at that point).
  previous = {k: v.numpy() for k, v in ckpt.items()}
  for r in (1, 2):
    ours = _masks_by_torch_name(workdir, r)
    want = _reference_rule(previous)
    assert set(ours) == set(want)
    for name in want:
      assert np.array_equal(ours[name], want[name]), (r, name)
    _export(workdir, tmp_path / f"ticket_{r}.npz", config, format="npz", ticket=r)
    with np.load(tmp_path / f"ticket_{r}.npz") as data:
      previous = {k: data[k] for k in data.files}
  unused_alive = [previous[f"{n}.weight"] != 0 for n in convert.UNUSED]
  assert 0 < sum(a.sum() for a in unused_alive) < sum(a.size for a in unused_alive)

  # Every rewind goes to the imported theta_0, not to an init from config.seed.
  run = train.Run(config, str(workdir))
  for name, value in convert.params_to_torch(run.rewind_target()).items():
    assert np.array_equal(value, theta_0[name]), name
  for name, value in convert.params_to_torch(run.unused_init()).items():
    assert np.array_equal(value, theta_0[name]), name

  _export(workdir, tmp_path / "ticket_2.pth", config, ticket=2)
  net.load_state_dict(torch.load(tmp_path / "ticket_2.pth", weights_only=True), strict=True)
  x = np.random.default_rng(1).random((1, 32, 48, 3), np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  params, _, _ = checkpointing.restore_ticket(str(workdir), 2)
  model = models.PromptIR(**config.model)
  ours = np.asarray(restore.make_forward(model, params)(x))
  assert np.abs(ours - theirs).max() < 1e-4
