"""The models of the structure benchmarks, built from configs with random weights (no downloads).

Each :class:`BenchModel` knows how to build its model (full size, or a tiny ``quick`` variant for smoke tests),
its example input at a batch size, how to read a tensor out of its output, how prunekit can rebuild it from a
spec (prunekit registry or Hugging Face config, for the save/load check) and where its attention projections are
(for Torch-Pruning's ``num_heads``).

Families decide the speed goal: ``conv`` (the goal holds at batch 1 and 32), ``mlp`` and ``transformer`` (at
batch 32; at batch 1 these models are bound by per-op overhead, not arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunekit.models import MODELS, build_model

Family = Literal["conv", "mlp", "transformer"]
Kind = Literal["image", "tokens", "features"]

ENCODER_SPEC = "bench_transformer_encoder"
_Q = ("query", "q_proj")
_K = ("key", "k_proj")
_V = ("value", "v_proj")


@MODELS.register(ENCODER_SPEC)
def transformer_encoder(
    d_in: int = 64, d_model: int = 256, heads: int = 4, layers: int = 4, ff: int = 1024, classes: int = 10
) -> nn.Module:
    """``Linear(d_in, d_model)`` -> ``nn.TransformerEncoder`` (batch_first, no dropout) -> ``Linear(d_model, classes)``
    per token. Registered so prunekit's slim checkpoints can rebuild it."""
    layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff, dropout=0.0, batch_first=True)
    return nn.Sequential(
        nn.Linear(d_in, d_model), nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.Linear(d_model, classes)
    )


@dataclass(frozen=True)
class BenchModel:
    """One row of the benchmark: ``spec`` builds it (prunekit registry dict or ``("hf", class, config kwargs)``)."""

    name: str
    label: str
    family: Family
    kind: Kind
    spec: dict[str, Any]
    quick_spec: dict[str, Any]
    size: int  # image side, sequence length or number of tokens (features)
    quick_size: int
    channels: int = 3  # image channels, or feature width (features), or vocabulary bound (tokens)
    causal_lm: bool = False
    size_b32: int | None = None  # smaller inputs for batch 32 when full size is too slow on 2 cores
    b32_kwargs: tuple[tuple[str, Any], ...] = ()  # keyword inputs that go with the smaller size (ViT: interpolate)
    notes: tuple[str, ...] = field(default=())

    def build(self, quick: bool, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        spec = self.quick_spec if quick else self.spec
        if "hf" not in spec:
            return build_model(spec).eval()
        import transformers as T

        cfg = getattr(T, spec["config"])(**spec["kwargs"])
        model: nn.Module = getattr(T, spec["hf"])(cfg)
        return model.eval()

    def input_size(self, quick: bool, batch: int) -> int:
        if quick:
            return self.quick_size
        return self.size_b32 if batch > 1 and self.size_b32 else self.size

    def example(self, quick: bool, batch: int, seed: int = 1) -> Any:
        """Random input of ``batch`` samples (a tensor, or a dict of keyword tensors for Hugging Face models)."""
        g = torch.Generator().manual_seed(seed)
        n = self.input_size(quick, batch)
        hf = "hf" in (self.quick_spec if quick else self.spec)
        extra = dict(self.b32_kwargs) if n != self.input_size(quick, 1) else {}
        if self.kind == "image":
            x = torch.randn(batch, self.channels, n, n, generator=g)
            return {"pixel_values": x, **extra} if hf else x
        if self.kind == "features":
            return torch.randn(batch, n, self.channels, generator=g)
        ids = torch.randint(0, 100 if quick else self.channels, (batch, n), generator=g)
        return {"input_ids": ids}

    def timing_input(self, quick: bool, batch: int) -> Any:
        """The input latency is measured on: causal LMs get ``use_cache=False`` (Torch-Pruning's LLM recipe turns the
        cache off, so every model is timed without building one)."""
        x = self.example(quick, batch)
        return {**x, "use_cache": False} if self.causal_lm else x

    def input_desc(self, quick: bool) -> str:
        b1, b32 = self.input_size(quick, 1), self.input_size(quick, 32)
        unit = {"image": "px", "tokens": "tokens", "features": "tokens"}[self.kind]
        return f"{b1} {unit}" if b1 == b32 else f"{b1} {unit} [{b32}]"


def output_tensor(out: Any) -> Tensor:
    """The tensor a model returns: ``.logits`` of a Hugging Face output, the first element of a tuple, or itself."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find the output tensor in {type(out).__name__}")


def call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def last_linear(model: nn.Module) -> str:
    """Fully qualified name of the last ``nn.Linear`` registered (the classifier or language-model head)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer")
    return names[-1]


def attention_modules(model: nn.Module) -> list[dict[str, Any]]:
    """Attention modules with separate q/k/v projections (or GPT-2's fused ``c_attn``) and their head counts."""
    out = []
    for fqn, m in model.named_modules():
        kids = dict(m.named_children())
        heads = next(
            (getattr(m, a) for a in ("num_attention_heads", "num_heads", "n_head") if isinstance(getattr(m, a, None), int)), None
        )
        cfg = getattr(m, "config", None)
        if heads is None and cfg is not None:
            heads = getattr(cfg, "num_attention_heads", None)
        kv = getattr(cfg, "num_key_value_heads", None) if cfg is not None else None
        q = next((n for n in _Q if n in kids), None)
        k = next((n for n in _K if n in kids), None)
        v = next((n for n in _V if n in kids), None)
        if q and k and v and isinstance(heads, int):
            out.append({"module": fqn, "q": q, "k": k, "v": v, "num_heads": heads, "num_kv_heads": int(kv or heads)})
        elif "c_attn" in kids and isinstance(heads, int):
            out.append({"module": fqn, "qkv": "c_attn", "num_heads": heads, "num_kv_heads": heads})
    return out


def _hf(cls: str, config: str, **kwargs: Any) -> dict[str, Any]:
    return {"hf": cls, "config": config, "kwargs": kwargs}


_TINY_TEXT = {"vocab_size": 100, "max_position_embeddings": 64}
_TINY_LM = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 8,
    **_TINY_TEXT,
}

MODELS_LIST: tuple[BenchModel, ...] = (
    BenchModel("lenet_300_100", "LeNet-300-100", "mlp", "image", {"name": "lenet_300_100"}, {"name": "lenet_300_100"}, 28, 28, 1),
    BenchModel("lenet5_caffe", "LeNet-5-Caffe", "conv", "image", {"name": "lenet5_caffe"}, {"name": "lenet5_caffe"}, 28, 28, 1),
    BenchModel("resnet20", "ResNet-20 (CIFAR)", "conv", "image", {"name": "resnet20"}, {"name": "resnet20"}, 32, 32),
    BenchModel("resnet56", "ResNet-56 (CIFAR)", "conv", "image", {"name": "resnet56"}, {"name": "resnet20"}, 32, 32),
    BenchModel("vgg16_bn", "VGG-16-BN (CIFAR)", "conv", "image", {"name": "vgg16_bn"}, {"name": "vgg11_bn"}, 32, 32),
    BenchModel(
        "transformer_encoder", "nn.TransformerEncoder (d 256, 4 heads, 4 layers)", "transformer", "features",
        {"name": ENCODER_SPEC}, {"name": ENCODER_SPEC, "kwargs": {"d_model": 32, "heads": 4, "layers": 2, "ff": 48}}, 32, 8, 64,
    ),
    BenchModel(
        "hf_resnet50", "HF ResNet-50", "conv", "image",
        _hf("ResNetForImageClassification", "ResNetConfig", num_labels=1000),
        _hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1], num_labels=10),
        224, 32, size_b32=112,
    ),
    BenchModel(
        "hf_convnext_tiny", "HF ConvNeXt-tiny", "conv", "image",
        _hf("ConvNextForImageClassification", "ConvNextConfig", num_labels=1000),
        _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
            num_labels=10),
        224, 32, size_b32=112,
    ),
    BenchModel(
        "hf_vit_small", "HF ViT-small/16", "transformer", "image",
        _hf("ViTForImageClassification", "ViTConfig", hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
            intermediate_size=1536, image_size=224, patch_size=16, num_labels=1000),
        _hf("ViTForImageClassification", "ViTConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, image_size=32, patch_size=8, num_labels=10),
        224, 32, size_b32=112, b32_kwargs=(("interpolate_pos_encoding", True),),
    ),
    BenchModel(
        "hf_bert_small", "HF BERT-small", "transformer", "tokens",
        _hf("BertForSequenceClassification", "BertConfig", hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
            intermediate_size=2048),
        _hf("BertForSequenceClassification", "BertConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, **_TINY_TEXT),
        32, 8, channels=30522,
    ),
    BenchModel(
        "hf_gpt2", "HF GPT-2-small", "transformer", "tokens",
        _hf("GPT2LMHeadModel", "GPT2Config"),
        _hf("GPT2LMHeadModel", "GPT2Config", n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0,
            eos_token_id=0),
        32, 8, channels=50257, causal_lm=True,
    ),
    BenchModel(
        "hf_opt_125m", "HF OPT-125m sizes", "transformer", "tokens",
        _hf("OPTForCausalLM", "OPTConfig", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
            word_embed_proj_dim=768),
        _hf("OPTForCausalLM", "OPTConfig", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=64, **_TINY_TEXT),
        32, 8, channels=50272, causal_lm=True,
    ),
    BenchModel(
        "hf_llama_gqa", "HF Llama-tiny, GQA 8q/2kv", "transformer", "tokens",
        _hf("LlamaForCausalLM", "LlamaConfig", hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=688, head_dim=32),
        _hf("LlamaForCausalLM", "LlamaConfig", intermediate_size=96, **_TINY_LM),
        32, 8, channels=32000, causal_lm=True,
    ),
    BenchModel(
        "hf_mixtral_tiny", "HF Mixtral-tiny (MoE, 4 experts, top-2)", "transformer", "tokens",
        _hf("MixtralForCausalLM", "MixtralConfig", hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, intermediate_size=512, head_dim=32, num_local_experts=4, num_experts_per_tok=2),
        _hf("MixtralForCausalLM", "MixtralConfig", intermediate_size=96, num_local_experts=4, num_experts_per_tok=2, **_TINY_LM),
        32, 8, channels=32000, causal_lm=True,
    ),
)  # fmt: skip

BY_NAME: dict[str, BenchModel] = {m.name: m for m in MODELS_LIST}


def config_summary(m: BenchModel, quick: bool) -> str:
    """The non-default config fields (or the registry spec) that define the model, for the markdown."""
    spec = m.quick_spec if quick else m.spec
    if "hf" in spec:
        kw = ", ".join(f"{k}={v}" for k, v in spec["kwargs"].items()) or "defaults"
        return f"{spec['hf']}({spec['config']}({kw}))"
    kw = ", ".join(f"{k}={v}" for k, v in (spec.get("kwargs") or {}).items())
    return f"build_model({spec['name']!r}{', ' + kw if kw else ''})"
