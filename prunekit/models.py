"""Model registry: builders addressable by name, so a checkpoint can rebuild its architecture without pickle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.errors import ConfigError
from prunekit.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


@MODELS.register("mlp")
def mlp(in_features: int = 784, hidden: tuple[int, ...] | list[int] = (300, 100), num_classes: int = 10) -> nn.Module:
    """Fully connected ReLU network: in -> hidden... -> classes (LeNet-300-100 with the defaults)."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, int(h)), nn.ReLU()]
        prev = int(h)
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("lenet_300_100")
def lenet_300_100(num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 (LeCun 1998; the MNIST MLP of Han 2015 and Frankle & Carbin 2019): 784-300-100-10."""
    return mlp(784, (300, 100), num_classes)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """``{"name": ..., "kwargs": {...}}`` -> model."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError("model", spec, 'expected {"name": <registered model>, "kwargs": {...}}')
    fn = MODELS.get(str(spec["name"]))
    try:
        return fn(**dict(spec.get("kwargs") or {}))
    except TypeError as e:
        raise ConfigError(f"model.kwargs ({spec['name']})", spec.get("kwargs"), str(e)) from None


from prunekit import zoo as _zoo  # noqa: E402,F401  (registers the model zoo)
