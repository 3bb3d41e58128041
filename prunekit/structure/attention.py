"""``nn.MultiheadAttention`` with separate projections, so that its heads can be removed.

Multi-head attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2.2)::

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

``torch.nn.MultiheadAttention`` stores ``W^Q``, ``W^K``, ``W^V`` packed in one ``in_proj_weight`` (3E, E) (or as
three bare parameters when ``kdim``/``vdim`` differ from ``embed_dim``) and computes every head in one call of
``F.multi_head_attention_forward``, which the dependency graph (:mod:`prunekit.structure.graph`) cannot look into:
every channel space touching it is frozen. :class:`SplitMultiheadAttention` computes exactly the same function from
ordinary modules the graph understands, the way Hugging Face attention layers are written: three ``nn.Linear``
projections ``q_proj``, ``k_proj``, ``v_proj`` (rows ``i*head_dim .. (i+1)*head_dim`` of each are head ``i``), a
``view(N, L, H, head_dim)`` and ``transpose(1, 2)`` into heads, ``F.scaled_dot_product_attention`` (or, when the
attention weights are asked for, ``softmax(q k^T / sqrt(head_dim) + mask) v`` written out), then
``transpose``/``reshape`` back to (N, L, H*head_dim) and ``out_proj``. A head is then one unit of a group whose
members are ``head_dim`` rows of ``q_proj``, ``k_proj``, ``v_proj`` and ``head_dim`` columns of ``out_proj``, and
:func:`~prunekit.structure.handlers.sync_attention_attributes_` sets ``num_heads`` after heads are removed.

:func:`split_attention_` replaces modules in place (outputs unchanged up to float rounding: three smaller matrix
products instead of one packed one; in eval mode under ``no_grad`` ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` run a fused native kernel whose rounding differs slightly as well). The split module
never takes that fused path (``in_proj_weight`` is ``None``), and ``nn.TransformerEncoder`` containers holding one
are told not to convert inputs to nested tensors.

``add_bias_kv``: ``bias_k``/``bias_v``, one extra key and value appended to the sequence, become ``nn.Linear(1,
embed_dim, bias=False)`` modules applied to a constant 1 (their weight column is the vector), so the graph sees them
as producers of the key/value heads and the ``Linear`` handler removes their entries with the heads.
``add_zero_attn`` (a zero key and value appended after the head split) is written with ``torch.where``, which the
graph maps per head.

After heads are removed the module computes the remaining heads exactly; the attention weights it returns
(``need_weights=True``) are those of the kept heads, and with ``average_attn_weights=True`` their average over the
*kept* heads (the original averaged over all). That average does not depend on which heads exist in shape, so it is
computed outside the dependency recording (a head average would otherwise be a reduction over the head dim and
freeze the heads even when the caller discards the weights, ``out, _ = attn(x, x, x)``). A 3-D ``attn_mask`` of
shape (N*num_heads, L, S) is per head: after removal it must have the kept heads' count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from prunekit.masks import masked_params
from prunekit.structure.handlers import StructureError

log = logging.getLogger(__name__)

SPLIT_ADVICE = "call prunekit.structure.split_attention_(model) first to make its heads prunable"


class SplitMultiheadAttention(nn.Module):
    """Drop-in replacement of ``nn.MultiheadAttention`` with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears.

    Same constructor arguments and the same ``forward`` signature and results as ``nn.MultiheadAttention``
    (module docstring); build one from an existing module with :meth:`from_mha`. Attributes read by
    ``nn.TransformerEncoderLayer``/``TransformerDecoderLayer``: ``batch_first``, ``num_heads``, ``embed_dim``,
    ``_qkv_same_embed_dim`` (``False``) and ``in_proj_weight``/``in_proj_bias`` (``None``: their fused fast path is
    skipped). ``embed_dim``, ``kdim`` and ``vdim`` are the current input widths (they follow removals on the residual
    stream); the number of heads used is ``q_proj.out_features // head_dim`` (``num_heads`` is kept equal to it by
    :func:`~prunekit.structure.handlers.sync_attention_attributes_`).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise StructureError(
                f"SplitMultiheadAttention: embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        f = {"device": device, "dtype": dtype}
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        # what nn.TransformerEncoderLayer checks before its fused fast path: never taken with split projections
        self._qkv_same_embed_dim = False
        self.in_proj_weight: Tensor | None = None
        self.in_proj_bias: Tensor | None = None
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **f)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias, **f)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias, **f)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **f)
        # add_bias_kv: the extra key/value vector is the weight column of a Linear(1, E) applied to a constant 1
        self.bias_k = nn.Linear(1, embed_dim, bias=False, **f) if add_bias_kv else None
        self.bias_v = nn.Linear(1, embed_dim, bias=False, **f) if add_bias_kv else None
        self._reset_parameters(kdim == embed_dim and vdim == embed_dim)

    @torch.no_grad()
    def _reset_parameters(self, packed: bool) -> None:
        """The initialisation of ``nn.MultiheadAttention``: Xavier-uniform projections (as one (3E, E) matrix when
        the dims agree), zero biases, Xavier-normal ``bias_k``/``bias_v`` (as (1, 1, E) tensors)."""
        e = self.q_proj.out_features
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            if packed:
                bound = math.sqrt(6.0 / (e + 3 * e))  # fan_in E, fan_out 3E of the packed in_proj_weight
                lin.weight.uniform_(-bound, bound)
            else:
                nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                lin.bias.zero_()
        if self.out_proj.bias is not None:
            self.out_proj.bias.zero_()
        for extra in (self.bias_k, self.bias_v):
            if extra is not None:
                extra.weight.normal_(0.0, math.sqrt(1.0 / e))  # xavier_normal_ of a (1, 1, E) tensor

    # -- widths that follow removals -------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Query (and output) width."""
        return int(self.out_proj.out_features)

    @property
    def kdim(self) -> int:
        return int(self.k_proj.in_features)

    @property
    def vdim(self) -> int:
        return int(self.v_proj.in_features)

    def extra_repr(self) -> str:
        heads = self.q_proj.out_features // self.head_dim
        return f"num_heads={heads}, head_dim={self.head_dim}, batch_first={self.batch_first}, dropout={self.dropout}"

    # -- construction from nn.MultiheadAttention ---------------------------------------------------------------
    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, fqn: str = "") -> SplitMultiheadAttention:
        """A copy of ``mha`` (weights, ``training`` mode, ``requires_grad``) with split projections.

        ``q_proj``/``k_proj``/``v_proj`` get rows ``[0, E)``, ``[E, 2E)``, ``[2E, 3E)`` of ``in_proj_weight`` and
        ``in_proj_bias`` (or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when ``kdim``/``vdim`` differ),
        ``out_proj`` is a plain ``nn.Linear`` copy of ``mha.out_proj``. A module whose tensors are parametrized
        (prunekit masks in reparam mode, or any ``torch.nn.utils.parametrize``) or masked in place raises
        :class:`StructureError`: copying would silently drop the masks.
        """
        where = f"module {fqn or '<root>'!r}"
        if not isinstance(mha, nn.MultiheadAttention):
            raise StructureError(f"{where}: expected an nn.MultiheadAttention, got {type(mha).__name__}")
        masked = [m.key for m in masked_params(mha)]
        if _is_masked(mha):
            raise StructureError(
                f"{where} (MultiheadAttention) carries masks or parametrizations ({', '.join(masked) or 'parametrize'}); "
                "split it before masking, or call prunekit.masks.finalize_(model) first"
            )
        e, h = int(mha.embed_dim), int(mha.num_heads)
        if mha.in_proj_weight is not None:
            w = mha.in_proj_weight.detach()
            wq, wk, wv = w[:e], w[e : 2 * e], w[2 * e :]
            grad = mha.in_proj_weight.requires_grad
        else:
            assert mha.q_proj_weight is not None and mha.k_proj_weight is not None and mha.v_proj_weight is not None
            wq, wk, wv = (p.detach() for p in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
            grad = mha.q_proj_weight.requires_grad
        b = mha.in_proj_bias
        with torch.device("meta"):  # shapes only; every tensor is replaced by a copy of mha's below
            new = cls(
                e,
                h,
                dropout=float(mha.dropout),
                bias=b is not None,
                add_bias_kv=mha.bias_k is not None,
                add_zero_attn=bool(mha.add_zero_attn),
                kdim=int(mha.kdim),
                vdim=int(mha.vdim),
                batch_first=bool(mha.batch_first),
            )

        def put(lin: nn.Linear, name: str, t: Tensor | None, requires_grad: bool) -> None:
            lin._parameters[name] = None if t is None else nn.Parameter(t.detach().clone(), requires_grad)

        for i, (lin, wi) in enumerate(((new.q_proj, wq), (new.k_proj, wk), (new.v_proj, wv))):
            put(lin, "weight", wi, grad)
            put(lin, "bias", None if b is None else b[i * e : (i + 1) * e], b is not None and b.requires_grad)
        op = mha.out_proj
        put(new.out_proj, "weight", op.weight, op.weight.requires_grad)
        put(new.out_proj, "bias", op.bias, op.bias is not None and op.bias.requires_grad)
        for extra, src in ((new.bias_k, mha.bias_k), (new.bias_v, mha.bias_v)):
            if extra is not None and src is not None:
                put(extra, "weight", src.detach().reshape(e, 1), src.requires_grad)  # (1, 1, E) -> (E, 1)
        new.train(mha.training)
        if mha._forward_hooks or mha._forward_pre_hooks:
            log.warning("%s: forward hooks of the nn.MultiheadAttention are not carried over to its split copy", where)
        return new

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``nn.MultiheadAttention.forward``: query (N, L, E) (``batch_first``), (L, N, E) or unbatched (L, E); key
        and value (N, S, kdim/vdim) likewise. Returns ``(attn_output, attn_weights)``; weights are ``None`` unless
        ``need_weights``, then (N, L, S) averaged over the heads or (N, H, L, S) per head (no N when unbatched).

        Masks as in ``nn.MultiheadAttention``: ``key_padding_mask`` (N, S) and ``attn_mask`` (L, S) or (N*H, L, S),
        boolean (``True`` = not attended) or float (added to the scores), merged by ``F._canonical_mask`` into float
        masks of the query's dtype; ``is_causal`` is a hint that ``attn_mask`` is causal (then required): without
        ``key_padding_mask`` and ``need_weights`` the mask is dropped for ``scaled_dot_product_attention``'s causal
        mode, as ``F.multi_head_attention_forward`` does.
        """
        if query.dim() not in (2, 3):
            raise RuntimeError(f"SplitMultiheadAttention: query must be 2-D (unbatched) or 3-D, got shape {tuple(query.shape)}")
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        bsz, tgt_len, src_len = query.shape[0], query.shape[1], key.shape[1]
        hd = self.head_dim
        heads = self.q_proj.out_features // hd
        mask, causal = self._mask(
            attn_mask, key_padding_mask, query.dtype, batched, (bsz, heads, tgt_len, src_len), is_causal, need_weights
        )

        q = self.q_proj(query)  # (N, L, H*hd)
        k = self.k_proj(key)  # (N, S, H*hd)
        v = self.v_proj(value)  # (N, S, H*hd)
        if self.bias_k is not None and self.bias_v is not None:  # one more key/value position: bias_k, bias_v
            one = torch.ones(bsz, 1, 1, dtype=k.dtype, device=k.device)
            k = torch.cat([k, self.bias_k(one)], dim=1)  # (N, S+1, H*hd)
            v = torch.cat([v, self.bias_v(one)], dim=1)
        q = q.view(bsz, tgt_len, heads, hd).transpose(1, 2)  # (N, H, L, hd)
        k = k.view(bsz, -1, heads, hd).transpose(1, 2)  # (N, H, S', hd)
        v = v.view(bsz, -1, heads, hd).transpose(1, 2)  # (N, H, S', hd)
        if self.add_zero_attn:  # one more key/value position of zeros
            n = k.shape[2]
            real = (torch.arange(n + 1, device=k.device) < n).view(1, 1, n + 1, 1)  # False at the new position
            k = torch.where(real, torch.cat([k, k[:, :, :1]], dim=2), 0.0)  # (N, H, S'+1, hd)
            v = torch.where(real, torch.cat([v, v[:, :, :1]], dim=2), 0.0)

        p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:  # softmax(q k^T / sqrt(hd) + mask) v, written out to return the weights
            scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(-2, -1)  # (N, H, L, S')
            if mask is not None:
                scores = scores + mask
            attn = F.softmax(scores, dim=-1)
            if p > 0.0:
                attn = F.dropout(attn, p=p)
            out = attn @ v  # (N, H, L, hd)
            weights = _returned_weights(attn, average_attn_weights, batched)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = out.transpose(1, 2).reshape(bsz, tgt_len, heads * hd)  # (N, L, H*hd)
        out = self.out_proj(out)  # (N, L, E)
        if not batched:
            return out.squeeze(0), weights
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        dtype: torch.dtype,
        batched: bool,
        sizes: tuple[int, int, int, int],
        is_causal: bool,
        need_weights: bool,
    ) -> tuple[Tensor | None, bool]:
        """The float mask added to the scores, (1|N, 1|H, L, S') with S' counting ``bias_k`` and the zero key, and
        whether ``scaled_dot_product_attention`` runs in causal mode instead (``F.multi_head_attention_forward``'s
        rules: ``F._canonical_mask`` turns boolean masks into ``-inf``/0 of the query's dtype, a 2-D mask is shared
        by batch and heads, the key padding mask is added to it, appended keys are never masked).

        Masks select positions and carry no channels of the model, so they are prepared with torch-function handling
        disabled: the dependency recording sees the result as a constant, also when a padding mask is a model input
        (whose sequence dim it would otherwise take for channels and freeze the heads with).
        """
        bsz, heads, tgt_len, src_len = sizes
        with torch._C.DisableTorchFunction():
            kpm = F._canonical_mask(
                mask=key_padding_mask,
                mask_name="key_padding_mask",
                other_type=F._none_or_dtype(attn_mask),
                other_name="attn_mask",
                target_type=dtype,
            )
            mask = F._canonical_mask(
                mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=dtype, check_other=False
            )
            if is_causal and mask is None:
                raise RuntimeError(
                    "Need attn_mask if specifying the is_causal hint (nn.Transformer.generate_square_subsequent_mask makes one)"
                )
            causal = is_causal and kpm is None and not need_weights
            mask = None if causal else _mask_4d(mask, bsz, heads, tgt_len, src_len)
            if kpm is not None:
                kpm = kpm if batched else kpm.unsqueeze(0)
                if tuple(kpm.shape) != (bsz, src_len):
                    raise RuntimeError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got {tuple(kpm.shape)}")
            extra = int(self.bias_k is not None) + int(self.add_zero_attn)  # appended keys: attended by every query
            if extra and mask is not None:
                mask = F.pad(mask, (0, extra))
            if kpm is not None:
                kpm = F.pad(kpm, (0, extra)).view(bsz, 1, 1, src_len + extra)  # (N, 1, 1, S')
                mask = kpm if mask is None else mask + kpm
        return mask, causal


def _mask_4d(mask: Tensor | None, bsz: int, heads: int, tgt_len: int, src_len: int) -> Tensor | None:
    """A float attn_mask (L, S) -> (1, 1, L, S); (N*H, L, S) -> (N, H, L, S); shapes checked as torch does."""
    if mask is None:
        return None
    if mask.dim() == 2:
        if tuple(mask.shape) != (tgt_len, src_len):
            raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(mask.shape)}, but should be {(tgt_len, src_len)}.")
        return mask.view(1, 1, tgt_len, src_len)
    if mask.dim() == 3:
        if tuple(mask.shape) != (bsz * heads, tgt_len, src_len):
            raise RuntimeError(
                f"The shape of the 3D attn_mask is {tuple(mask.shape)}, but should be {(bsz * heads, tgt_len, src_len)} "
                f"(batch * num_heads with the current {heads} heads)."
            )
        return mask.view(bsz, heads, tgt_len, src_len)
    raise RuntimeError(f"attn_mask's dimension {mask.dim()} is not supported")


def _returned_weights(attn: Tensor, average: bool, batched: bool) -> Tensor:
    """The weights returned with ``need_weights``: (N, H, L, S) per head, or their mean over the heads (N, L, S).

    The head average runs with torch-function handling disabled, so the dependency recording
    (:mod:`prunekit.structure.record`) does not see a reduction over the heads (module docstring)."""
    if average:
        with torch._C.DisableTorchFunction():
            w = attn.mean(dim=1)
            return w if batched else w.squeeze(0)
    return attn if batched else attn.squeeze(0)


# -- replacing modules -------------------------------------------------------------------------------------------


@dataclass
class SplitRecord:
    """What :func:`swap_in_split_attention_` changed, so that :meth:`undo` can put the original modules back."""

    names: list[str] = field(default_factory=list)
    swaps: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)  # (parent, child name, original)
    nested: list[tuple[nn.TransformerEncoder, bool]] = field(default_factory=list)  # (encoder, its use_nested_tensor)

    def undo(self) -> None:
        for parent, name, old in reversed(self.swaps):
            parent._modules[name] = old
        for enc, flag in self.nested:
            enc.use_nested_tensor = flag
        self.swaps, self.nested = [], []


def attention_modules(model: nn.Module) -> list[str]:
    """Paths of the ``nn.MultiheadAttention`` modules of ``model`` (each module once)."""
    return [fqn for fqn, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def split_modules(model: nn.Module) -> list[str]:
    """Paths of the :class:`SplitMultiheadAttention` modules of ``model`` (what a plan's ``split`` lists)."""
    return [fqn for fqn, m in model.named_modules() if isinstance(m, SplitMultiheadAttention)]


def swap_in_split_attention_(model: nn.Module, names: Iterable[str] | None = None) -> SplitRecord:
    """:func:`split_attention_`, returning a :class:`SplitRecord` that can undo it.

    All copies are built before any module is replaced, so an error leaves ``model`` unchanged. A module reachable
    under several paths (shared) is replaced under every path.
    """
    mods = dict(model.named_modules())
    if names is None:
        targets = attention_modules(model)
    else:
        targets = []
        for n in dict.fromkeys(names):
            m = mods.get(n)
            if isinstance(m, SplitMultiheadAttention):
                continue
            if not isinstance(m, nn.MultiheadAttention):
                what = "no such module" if m is None else f"a {type(m).__name__}"
                raise StructureError(
                    f"cannot split {n!r}: {what}; only nn.MultiheadAttention modules (or already split ones) can be split"
                )
            targets.append(n)
    if "" in targets:
        raise StructureError(
            "the model itself is an nn.MultiheadAttention and cannot be replaced in place; "
            "use SplitMultiheadAttention.from_mha(model)"
        )
    new = {id(mods[n]): SplitMultiheadAttention.from_mha(mods[n], n) for n in targets}
    rec = SplitRecord(names=list(targets))
    if not new:
        return rec
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in new:
                rec.swaps.append((parent, child_name, child))
                parent._modules[child_name] = new[id(child)]
    for enc in model.modules():
        # TransformerEncoder's nested-tensor path hands nested tensors to the layers, which only the fused kernel takes
        if (
            isinstance(enc, nn.TransformerEncoder)
            and getattr(enc, "use_nested_tensor", False)
            and any(isinstance(getattr(layer, "self_attn", None), SplitMultiheadAttention) for layer in enc.layers)
        ):
            rec.nested.append((enc, True))
            enc.use_nested_tensor = False
    log.debug("split nn.MultiheadAttention into q/k/v/out projections: %s", ", ".join(targets))
    return rec


def split_attention_(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (or those named) by its :class:`SplitMultiheadAttention`,
    in place; returns the paths replaced (already split modules among ``names`` are skipped).

    Outputs stay the same up to float rounding (module docstring); the state_dict keys change
    (``in_proj_weight`` -> ``q_proj.weight``, ...), so an optimizer built before must be rebuilt. A named module that
    is neither, or a masked ``nn.MultiheadAttention``, raises :class:`StructureError` and nothing is changed.
    """
    done = swap_in_split_attention_(model, names).names
    if done:
        log.info("split nn.MultiheadAttention into q/k/v/out projections: %s", ", ".join(done))
    return done


def needed_splits(model: nn.Module, temporary: Iterable[str], touched: Iterable[str]) -> tuple[str, ...]:
    """The ``split`` of a plan made on ``model`` while the modules ``temporary`` were split for the analysis.

    Every :class:`SplitMultiheadAttention` that was already in ``model`` (it is part of the architecture the plan
    must reproduce from the original), plus the temporarily split modules that contain a module the plan
    ``touched`` (the others are put back unchanged, so the plan leaves them as they are).
    """
    tmp = set(temporary)
    fqns = list(touched)
    keep = [n for n in split_modules(model) if n not in tmp or any(f.startswith(n + ".") for f in fqns)]
    return tuple(keep)


def _is_masked(module: nn.Module) -> bool:
    return next(masked_params(module), None) is not None or any(parametrize.is_parametrized(m) for m in module.modules())


@contextmanager
def attention_split(model: nn.Module, enabled: bool = True) -> Iterator[list[str]]:
    """Split every ``nn.MultiheadAttention`` of ``model`` for the duration of the ``with`` block, then put the
    original modules back (also on error). Yields the paths split (empty: nothing to do, or ``enabled`` is False,
    e.g. when the caller already built the groups). Modules carrying masks or parametrizations are left as they
    are (their heads stay frozen in the dependency graph)."""
    if not enabled:
        yield []
        return
    mods = dict(model.named_modules())
    names = attention_modules(model)
    masked = [n for n in names if _is_masked(mods[n])]
    if masked:
        log.info("not splitting masked nn.MultiheadAttention modules (finalize_ the masks first): %s", ", ".join(masked))
    rec = swap_in_split_attention_(model, [n for n in names if n not in masked and n])
    try:
        yield rec.names
    finally:
        rec.undo()
