"""Weight updaters: the OBS compensation applied by the Pruner, recipes and the registry."""

import pytest
import torch
from torch import nn

from prunekit import ConfigError, Pruner, ScoreContext
from prunekit.recipe import PruneRecipe, recipe_from_dict, recipe_hash, recipe_to_dict
from prunekit.scoring import OBS, obs_prune, reconstruction_hessian
from prunekit.updaters import UPDATERS, NoUpdate, OBSUpdate


def _layer_and_inputs(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(12, 6, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(6, 12, generator=g, dtype=torch.float64))
    x = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    return lin, x


def _recon(w_new: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w_new - w).T) ** 2).sum(1).mean())


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_pruner_with_obs_update_matches_obs_and_beats_mask_only(sparsity: float) -> None:
    lin, x = _layer_and_inputs()
    w0 = lin.weight.detach().clone()
    ctx = ScoreContext(lin, calibration=[(x[:100],), (x[100:],)])
    with_update = Pruner(sparsity=sparsity, scorer=OBS(damping=0.0), update=OBSUpdate(damping=0.0)).attach(lin)
    with_update.prune_(ctx)
    w_upd = lin.weight.detach().clone()
    keep = lin.weight_mask
    # exactly the mask's sparsity, pruned entries zero, kept entries changed (compensated)
    assert int((~keep).sum()) == round(sparsity * w0.numel())
    assert torch.all(w_upd[~keep] == 0)
    assert not torch.allclose(w_upd[keep], w0[keep])
    # the update is the exact joint OBS update for that mask (one solve per row)
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    ref = obs_prune(w0, h, mask=keep, damping=0.0)
    torch.testing.assert_close(w_upd, ref.weight)
    assert _recon(w_upd, w0, x) == pytest.approx(ref.total_loss, rel=1e-6)
    # the same mask without the update reconstructs worse
    assert _recon(torch.where(keep, w0, torch.zeros_like(w0)), w0, x) > _recon(w_upd, w0, x)


def test_obs_update_needs_calibration_data() -> None:
    lin, _ = _layer_and_inputs()
    p = Pruner(sparsity=0.5, update=OBSUpdate()).attach(lin)
    with pytest.raises(ConfigError, match=r"update.*calibration"):
        p.prune_()


def test_update_in_recipes_round_trips_and_the_default_is_left_out() -> None:
    r = recipe_from_dict({"sparsity": 0.5, "update": {"name": "obs", "damping": 0.02}})
    assert r.update == OBSUpdate(damping=0.02)
    assert recipe_from_dict(recipe_to_dict(r)) == r
    plain = PruneRecipe(sparsity=0.5)
    assert isinstance(plain.update, NoUpdate) and "update" not in recipe_to_dict(plain)
    assert recipe_hash(plain) == recipe_hash(recipe_from_dict({"sparsity": 0.5, "update": "none"}))
    assert recipe_hash(plain) != recipe_hash(r)


def test_bad_updater_names_and_values_are_clear() -> None:
    with pytest.raises(ConfigError, match="did you mean 'obs'"):
        recipe_from_dict({"sparsity": 0.5, "update": "osb"})
    with pytest.raises(ConfigError, match=r"update\.damping"):
        OBSUpdate(damping=-1.0)


@pytest.mark.parametrize("name", UPDATERS.names())
def test_every_updater_keeps_the_pruner_contract(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    p = Pruner(sparsity=0.5, update=UPDATERS.get(name)()).attach(model)
    p.prune_(ScoreContext(model, calibration=[(x[:32],), (x[32:],)]))
    for m in (model[0], model[2]):
        assert float((~m.weight_mask).float().mean()) == 0.5
        assert torch.all(m.weight[~m.weight_mask] == 0)


def test_cli_prune_with_the_obs_update(tmp_path) -> None:
    from prunekit.checkpoint import load_checkpoint, save_checkpoint
    from prunekit.cli.main import main
    from prunekit.masks import masks_of
    from prunekit.models import build_model

    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "num_classes": 10}}
    model = build_model(spec)
    src = save_checkpoint(tmp_path / "in", model, model_spec=spec, extra={"input_shape": [1, 64]})
    args = ["prune", "--model", str(src), "--sparsity", "0.5", "--scorer", "obs", "--calibration", "digits"]
    assert main([*args, "--calibration-batches", "2", "--update", "obs", "--out", str(tmp_path / "obs")]) == 0
    assert main([*args, "--calibration-batches", "2", "--out", str(tmp_path / "mask")]) == 0
    a, b = load_checkpoint(tmp_path / "obs").model, load_checkpoint(tmp_path / "mask").model
    assert torch.equal(masks_of(a)["1.weight"], masks_of(b)["1.weight"])  # same OBS ranking, same mask
    keep = masks_of(a)["1.weight"]
    assert not torch.allclose(a[1].weight[keep], b[1].weight[keep])  # but the kept weights were compensated
