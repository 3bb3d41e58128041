import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as tprune

from prunekit import MaskError, attach_mask_, bind_optimizer_, finalize_, from_torch_prune_, get_mask, masks_of, to_torch_prune_
from prunekit.masks import (
    clear_optimizer_state_,
    mask_mode,
    masked_params,
    pack_bits,
    packed_size,
    raw_param,
    restore_masks_,
    unpack_bits,
    update_mask_,
)
from prunekit.testing.models import TinyConvNet, TinyMLP


def _random_masks(model, mode, density=0.3):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            attach_mask_(m, "weight", torch.rand_like(m.weight) < density, mode=mode)


@pytest.mark.parametrize("mode", ["inplace", "reparam"])
def test_mask_is_a_bool_buffer_in_state_dict(mode):
    m = TinyMLP()
    _random_masks(m, mode)
    sd = m.state_dict()
    mask_keys = [k for k in sd if k.endswith("mask")]
    assert len(mask_keys) == 3 and all(sd[k].dtype == torch.bool for k in mask_keys)
    fresh = TinyMLP()
    restore_masks_(fresh, sd)
    fresh.load_state_dict(sd)
    for k, v in masks_of(m).items():
        assert torch.equal(masks_of(fresh)[k], v)
    x = torch.randn(3, 16)
    assert torch.equal(m(x), fresh(x))


@pytest.mark.parametrize(
    "opt_cls",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=0.05),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    ],
)
@pytest.mark.parametrize("mode", ["inplace", "packed"])
def test_inplace_pruned_entries_never_revive(opt_cls, mode):
    m = TinyConvNet()
    opt = opt_cls(m.parameters())
    # Train densely first so that momentum / Adam moments are non-zero everywhere.
    for _ in range(5):
        opt.zero_grad()
        m(torch.randn(4, 3, 6, 6)).square().mean().backward()
        opt.step()
    _random_masks(m, mode)
    bind_optimizer_(m, opt)
    assert clear_optimizer_state_(opt, m) > 0
    for _ in range(100):
        opt.zero_grad()
        m(torch.randn(4, 3, 6, 6)).square().mean().backward()
        for mp in masked_params(m):  # gradients of pruned entries are masked as soon as they accumulate
            assert mp.param.grad[~mp.mask].eq(0).all()
        opt.step()
        for mp in masked_params(m):
            assert mp.param[~mp.mask].eq(0).all()
    for mp in masked_params(m):
        for v in opt.state[mp.param].values():
            if torch.is_tensor(v) and v.shape == mp.param.shape:
                assert v[~mp.mask].eq(0).all()


def test_reparam_gives_masked_weight_and_gradient_to_original():
    lin = nn.Linear(4, 3)
    mask = torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool)
    attach_mask_(lin, "weight", mask, mode="reparam")
    orig = raw_param(lin, "weight")
    assert torch.equal(lin.weight, orig * mask)
    lin(torch.ones(2, 4)).sum().backward()
    assert orig.grad[:, 1].eq(0).all() and orig.grad[:, 0].ne(0).all()


def test_reparam_straight_through_passes_dense_gradient():
    lin = nn.Linear(4, 3)
    attach_mask_(lin, "weight", torch.zeros(3, 4, dtype=torch.bool), mode="reparam", straight_through=True)
    assert lin.weight.eq(0).all()
    lin(torch.ones(2, 4)).sum().backward()
    assert raw_param(lin, "weight").grad.ne(0).all()


@pytest.mark.parametrize("mode", ["inplace", "packed", "reparam"])
def test_finalize_leaves_plain_module_with_same_outputs(mode):
    m = TinyConvNet().eval()
    _random_masks(m, mode)
    x = torch.randn(2, 3, 6, 6)
    before = m(x)
    finalize_(m)
    assert not list(masked_params(m)) and not any("mask" in k for k in m.state_dict())
    assert all(type(p) is nn.Parameter for p in m.parameters())
    assert torch.allclose(m(x), before)
    assert set(m.state_dict()) == set(TinyConvNet().state_dict())


def test_update_mask_keeps_buffer_identity_and_rezeroes():
    lin = nn.Linear(3, 2)
    buf = attach_mask_(lin, "weight")
    update_mask_(lin, "weight", torch.tensor([[True, False, True], [False, False, True]]))
    assert get_mask(lin, "weight") is buf
    assert lin.weight[0, 1] == 0 and lin.weight[1, 0] == 0


def test_loading_dense_weights_into_masked_model_rezeroes():
    lin = nn.Linear(3, 2)
    attach_mask_(lin, "weight", torch.tensor([[True, False, True], [False, True, True]]))
    sd = {k: v for k, v in nn.Linear(3, 2).state_dict().items()}
    sd["weight_mask"] = lin.weight_mask.clone()
    lin.load_state_dict(sd)
    assert lin.weight[0, 1] == 0 and lin.weight[1, 0] == 0


def test_errors_are_typed_and_named():
    lin = nn.Linear(3, 2)
    with pytest.raises(MaskError, match=r"mask shape \(3, 3\)"):
        attach_mask_(lin, "weight", torch.ones(3, 3, dtype=torch.bool))
    attach_mask_(lin, "weight")
    with pytest.raises(MaskError, match="already has a mask"):
        attach_mask_(lin, "weight")
    with pytest.raises(MaskError, match="no prunekit mask"):
        get_mask(lin, "bias")


def test_torch_prune_round_trip():
    m = TinyMLP()
    tprune.l1_unstructured(m.fc1, "weight", amount=0.5)
    tprune.random_unstructured(m.fc2, "weight", amount=0.25)
    tprune.l1_unstructured(m.fc2, "weight", amount=0.25)  # a PruningContainer
    x = torch.randn(2, 16)
    ref = m(x)
    expected = {"fc1.weight": m.fc1.weight_mask.bool().clone(), "fc2.weight": m.fc2.weight_mask.bool().clone()}
    assert from_torch_prune_(m) == 2
    assert not hasattr(m.fc1, "weight_orig")
    assert not any(isinstance(h, tprune.BasePruningMethod) for h in m.fc1._forward_pre_hooks.values())
    for k, v in expected.items():
        assert torch.equal(masks_of(m)[k], v)
    assert torch.allclose(m(x), ref)
    assert to_torch_prune_(m) == 2
    assert hasattr(m.fc1, "weight_orig") and torch.equal(m.fc1.weight_mask.bool(), expected["fc1.weight"])
    assert torch.allclose(m(x), ref)


@pytest.mark.parametrize("mode", ["inplace", "packed"])
def test_deepcopy_keeps_masks_enforced(mode):
    m = TinyMLP()
    _random_masks(m, mode)
    c = copy.deepcopy(m)
    c(torch.randn(2, 16)).sum().backward()
    for mp in masked_params(c):
        assert mp.param.grad[~mp.mask].eq(0).all()


@pytest.mark.parametrize("mode", ["inplace", "packed", "reparam"])
def test_deepcopy_is_independent_of_original(mode):
    m = TinyMLP()
    _random_masks(m, mode)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    bind_optimizer_(m, opt)
    c = copy.deepcopy(m)
    finalize_(c)  # must not remove the original's hooks or optimizer binding
    assert not list(masked_params(c))
    opt.zero_grad()
    m(torch.randn(2, 16)).sum().backward()
    opt.step()
    for mp in masked_params(m):
        assert getattr(mp.module, mp.name)[~mp.mask].eq(0).all()  # the effective weight
        if mode != "reparam":
            assert mp.param.grad[~mp.mask].eq(0).all()


# -- packed masks: one bit per entry ---------------------------------------------------------------------------------


def test_bit_order_hand_computed():
    mask = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)  # entries 0, 2, 3 | 8, 9
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.tolist() == [1 + 4 + 8, 1 + 2]
    assert torch.equal(unpack_bits(packed, (1, 10)), mask.to(torch.uint8))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), density=st.floats(0.0, 1.0), seed=st.integers(0, 999))
def test_pack_unpack_round_trip(shape, density, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density
    packed = pack_bits(mask)
    assert packed.numel() == packed_size(mask.shape) == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape).bool(), mask)


def test_packed_buffer_is_one_bit_per_entry_and_round_trips_state_dict():
    m = TinyConvNet()
    _random_masks(m, "packed")
    sd = m.state_dict()
    for mp in masked_params(m):
        buf = sd[f"{mp.key}_mask"]
        assert mask_mode(mp.module, mp.name) == "packed"
        assert buf.dtype == torch.uint8 and buf.shape == (-(-mp.param.numel() // 8),)
        assert mp.mask.dtype == torch.bool and mp.mask.shape == mp.param.shape
        assert mp.param[~mp.mask].eq(0).all()
    fresh = TinyConvNet()
    assert restore_masks_(fresh, sd) == 3  # uint8 mask buffers are recognised as packed
    fresh.load_state_dict(sd)
    for k, v in masks_of(m).items():
        assert torch.equal(masks_of(fresh)[k], v)
    assert all(mask_mode(mp.module, mp.name) == "packed" for mp in masked_params(fresh))
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(m.eval()(x), fresh.eval()(x))


def test_packed_update_keeps_the_buffer_and_loading_dense_weights_rezeroes():
    lin = nn.Linear(3, 2)
    attach_mask_(lin, "weight", mode="packed")
    buf = lin.weight_mask
    new = torch.tensor([[True, False, True], [False, False, True]])
    update_mask_(lin, "weight", new)
    assert lin.weight_mask is buf and buf.tolist() == [1 + 4 + 32]  # entries 0, 2, 5
    assert torch.equal(get_mask(lin, "weight"), new) and lin.weight[~new].eq(0).all()
    sd = nn.Linear(3, 2).state_dict() | {"weight_mask": buf.clone()}
    lin.load_state_dict(sd)
    assert lin.weight[~new].eq(0).all() and lin.weight[new].ne(0).all()
    with pytest.raises(MaskError, match=r"mask shape \(2, 2\)"):
        update_mask_(lin, "weight", torch.ones(2, 2, dtype=torch.bool))
