import pytest
import torch
from torch import nn

from prunekit import (
    NM,
    ConfigError,
    Global,
    Iterative,
    MaskError,
    Polynomial,
    Pruner,
    PruneRecipe,
    RandomScore,
    Targets,
    load_checkpoint,
    masks_of,
    save_checkpoint,
)
from prunekit.checkpoint import load_optimizer_state
from prunekit.masks import masked_params
from prunekit.testing.models import TinyConvNet, TinyMLP


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def _train(model, opt, pruner, steps, start=0):
    for s in range(start, start + steps):
        x, y = _batch(s)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()


def test_gradual_reaches_exact_target_and_masks_are_nested():
    m = TinyMLP()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    p = Pruner(PruneRecipe(sparsity=0.8, allocator=Global(), schedule=Polynomial(begin=2, end=23, every=5))).attach(m, opt)
    prev = None
    for s in range(30):
        _train(m, opt, p, 1, start=s)
        cur = {k: v.clone() for k, v in masks_of(m).items()}
        if prev is not None:
            for k in cur:
                assert (cur[k] <= prev[k]).all()  # once pruned, always pruned
        prev = cur
    total = sum(v.numel() for v in prev.values())
    assert sum(int((~v).sum()) for v in prev.values()) == round(0.8 * total)
    for mp in masked_params(m):
        assert mp.param[~mp.mask].eq(0).all()


def test_iterative_and_overrides_and_exclusions():
    m = TinyMLP()
    r = PruneRecipe(
        sparsity=0.75,
        schedule=Iterative(rounds=2, every=1),
        targets=Targets(skip_last=True),
        overrides={"fc2*": 0.5},
    )
    p = Pruner(r).attach(m)
    assert [t.key for t in p.targets] == ["fc1.weight", "fc2.weight"]
    p.step()
    assert masks_of(m)["fc1.weight"].float().mean() == pytest.approx(0.5, abs=1 / 192)
    p.step()
    ms = masks_of(m)
    assert int((~ms["fc1.weight"]).sum()) == round(0.75 * 192)
    assert int((~ms["fc2.weight"]).sum()) == round(0.5 * 96)
    assert "fc3.weight" not in ms


def test_nm_pattern_on_conv():
    m = TinyConvNet(c_in=4)
    Pruner(PruneRecipe(pattern=NM(2, 4), targets=Targets(types=("Conv2d",)))).attach(m).prune_()
    for mp in masked_params(m):
        assert mp.mask.reshape(mp.mask.shape[0], -1, 4).sum(-1).eq(2).all()


def test_recipe_errors():
    with pytest.raises(ConfigError, match="sparsity"):
        PruneRecipe()
    with pytest.raises(ConfigError, match=r"implies 0\.5"):
        PruneRecipe(sparsity=0.7, pattern=NM(2, 4))
    with pytest.raises(ConfigError, match="uniform"):
        PruneRecipe(pattern=NM(2, 4), allocator=Global())
    with pytest.raises(ConfigError, match="targets"):
        Pruner(PruneRecipe(sparsity=0.5, targets=Targets(types=("Conv3d",)))).attach(TinyMLP())
    with pytest.raises(MaskError, match="attach"):
        Pruner(PruneRecipe(sparsity=0.5)).prune_()


@pytest.mark.parametrize("mode", ["inplace", "packed", "reparam"])
@pytest.mark.parametrize("scorer", [None, RandomScore(seed=3)])
def test_interrupt_and_resume_is_bit_identical(tmp_path, mode, scorer):
    fields = {"scorer": scorer} if scorer else {}
    recipe = PruneRecipe(sparsity=0.7, allocator=Global(), schedule=Polynomial(begin=0, end=20, every=3), mode=mode, **fields)

    def fresh():
        torch.manual_seed(0)
        model = TinyMLP()
        pruner = Pruner(recipe).attach(model)  # masks first: in reparam mode the optimizer must see `original`
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        pruner.attach(model, opt)
        return model, opt, pruner

    m1, o1, p1 = fresh()
    _train(m1, o1, p1, 30)

    m2, o2, p2 = fresh()
    _train(m2, o2, p2, 13)
    save_checkpoint(tmp_path / "ck", m2, optimizer=o2, pruner_state=p2.state_dict())
    del m2, o2, p2

    torch.manual_seed(123)  # a resumed process starts from different RNG state
    m3 = TinyMLP()
    load_checkpoint(tmp_path / "ck", m3)
    p3 = Pruner(recipe)
    p3.attach(m3)
    o3 = torch.optim.Adam(m3.parameters(), lr=0.01)
    load_optimizer_state(tmp_path / "ck", o3)
    p3.attach(m3, o3)
    p3.load_state_dict(load_checkpoint.__globals__["read_meta"](tmp_path / "ck")["pruner"])
    _train(m3, o3, p3, 17, start=13)

    sd1, sd3 = m1.state_dict(), m3.state_dict()
    assert sd1.keys() == sd3.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd3[k]), k


def test_tied_weights_are_one_target():
    from prunekit.testing.models import TiedEmbeddingLM

    m = TiedEmbeddingLM()
    p = Pruner(PruneRecipe(sparsity=0.5, targets=Targets(types=("Embedding", "Linear")))).attach(m)
    assert [t.key for t in p.targets] == ["emb.weight", "proj.weight"]
    p.prune_()
    assert m.head.weight is m.emb.weight and float((m.head.weight == 0).float().mean()) == 0.5
