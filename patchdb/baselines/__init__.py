"""CNN baselines: the paper's convolution-only ResNet and UNet (with an attention variant), their
training and checkpoints, and the adapter that makes an epsilon-network a denoiser ``D(x, t, labels)``."""

from .adapter import EpsDenoiser, eps_from_denoiser, score_from_denoiser
from .models import (
    ARCHS,
    PADDINGS,
    PREDICTS,
    ModelConfig,
    ResNet,
    UNet,
    build_model,
    count_parameters,
    receptive_field,
)
from .train import TrainConfig, check_data_fits, load_checkpoint, read_config, train, weights_digest

__all__ = [
    "ARCHS", "PADDINGS", "PREDICTS", "EpsDenoiser", "ModelConfig", "ResNet", "TrainConfig", "UNet", "build_model",
    "check_data_fits", "count_parameters", "eps_from_denoiser", "load_checkpoint", "read_config",
    "receptive_field", "score_from_denoiser", "train", "weights_digest",
]
