"""``SkipBlock``: what a removed block (a residual block, a transformer layer) is replaced by.

It returns the block's first input, the hidden states the block would have updated, in the container its caller
expects: the tensor itself (prunekit's ResNets, ``nn.TransformerEncoderLayer``, Hugging Face transformers 5.x layers,
which return a tensor), or a tuple ``(hidden_states, None, ...)`` of the length the block returned (older Hugging Face
layers returned ``(hidden_states, attn_weights, present)`` and callers index ``[0]``).

Plain attributes of the replaced block (``int``, ``float``, ``bool``, ``str``, ``None``: ``layer_idx``,
``attention_type``, ...) are copied, because some callers read them from the layer in their loop
(``causal_mask_mapping[decoder_layer.attention_type]``). The block has no parameters or buffers, so the slim
``state_dict`` simply lacks the removed block's tensors.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

Output = Literal["tensor", "tuple"]
OUTPUTS: tuple[Output, ...] = ("tensor", "tuple")
_PLAIN = (int, float, bool, str, type(None))


def plain_attributes(module: nn.Module) -> dict[str, Any]:
    """Public scalar attributes of ``module`` (not ``training``), copied onto the :class:`SkipBlock` replacing it."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and isinstance(v, _PLAIN)}


class SkipBlock(nn.Module):
    """Identity stand-in for a removed block of class ``replaced`` (see the module docstring)."""

    def __init__(
        self, replaced: str, output: Output = "tensor", length: int = 1, attributes: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        for k, v in (attributes or {}).items():
            if k not in ("replaced", "output", "length"):
                setattr(self, k, v)
        self.replaced, self.output, self.length = replaced, output, length

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            x = args[0]
        elif "hidden_states" in kwargs:
            x = kwargs["hidden_states"]
        else:
            raise TypeError(f"SkipBlock (replacing {self.replaced}) called without a positional input or hidden_states=")
        if self.output == "tuple":
            return (x,) + (None,) * (self.length - 1)
        return x

    def extra_repr(self) -> str:
        shape = "" if self.output == "tensor" else f", returns a {self.length}-tuple"
        return f"replaces {self.replaced}{shape}"
