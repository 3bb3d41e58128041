"""A small character-level GPT in the style of nanoGPT (Karpathy), sized for CPU runs on Tiny Shakespeare."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.errors import ConfigError
from prunekit.models import MODELS


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``.

    Queries, keys and values have separate projections (nanoGPT fuses them into one ``c_attn``; the parameter
    count is the same), so each head's rows are addressable for structured pruning.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.head_dim = n_embd // n_head
        self.q_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.k_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.v_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.out_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape

        def heads(p: nn.Module) -> Tensor:  # head count from the projection's width: heads can be pruned
            out: Tensor = p(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
            return out

        y = F.scaled_dot_product_attention(
            heads(self.q_proj),
            heads(self.k_proj),
            heads(self.v_proj),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, nh * hs)
        out: Tensor = self.resid_drop(self.out_proj(y))
        return out


class MLP(nn.Module):
    """Linear(C, 4C) - GELU - Linear(4C, C) - dropout."""

    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.drop(self.proj(F.gelu(self.fc(x))))
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class CharGPT(nn.Module):
    """GPT decoder (Radford et al. 2019 layout as in nanoGPT): token + learned position embeddings, ``n_layer``
    pre-LN blocks, final LayerNorm, and an output head whose weight is tied to the token embedding (Press & Wolf 2017).

    ``forward(idx)`` maps token ids (B, T), T <= ``block_size``, to next-token logits (B, T, vocab_size).
    Initialisation follows GPT-2: N(0, 0.02), with the residual output projections scaled by 1/sqrt(2 n_layer).
    """

    def __init__(
        self,
        vocab_size: int = 65,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ConfigError("n_embd", n_embd, f"must be divisible by n_head={n_head}")
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out_proj.weight", "mlp.proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ConfigError("sequence length", t, f"at most block_size={self.block_size}")
        pos = self.wpe.weight[:t]  # (T, C)
        x = self.drop(self.wte(idx) + pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        return out


@MODELS.register("char_gpt")
def char_gpt(
    vocab_size: int = 65,
    block_size: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
    bias: bool = False,
) -> nn.Module:
    """Character-level GPT, nanoGPT-style (pre-LN, causal SDPA, GELU MLP, tied head); 0.82M parameters by default."""
    return CharGPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
