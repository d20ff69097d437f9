"""Training a KFI adapter: settings (:mod:`.config`), objective (:mod:`.objective`), checkpoints
(:mod:`.checkpoints`), the loop (:mod:`.trainer`), data (:mod:`.data`, :mod:`.mask_synthesis`).

    from kfi_core.training import load_train_config, train
    train(load_train_config("configs/tiny.json"))
"""

from kfi_core.training.checkpoints import export_checkpoint
from kfi_core.training.config import TrainConfig, apply_overrides, config_from_dict, load_train_config, parse_resolution
from kfi_core.training.mask_synthesis import render_preview, sample_masks, sample_masks_with_info
from kfi_core.training.trainer import train

__all__ = [
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "export_checkpoint",
    "load_train_config",
    "parse_resolution",
    "render_preview",
    "sample_masks",
    "sample_masks_with_info",
    "train",
]
