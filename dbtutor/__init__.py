"""dbtutor: DreamBooth with prior preservation, taught step by step and runnable on a CPU."""
from .core.config import DEFAULT_CONFIG, ROOT, load_config
from .core.errors import ConfigError, DataError, DBTutorError, LockedError, TrainingError
from .data import DreamBoothDataset, collate, load_image, preprocess, scan_images
from .latent_cache import cache_latents
from .models.model_check import check_model
from .models.pipeline import load_pipeline, pick_device, sample, text_moved, text_shift
from .regularization import generate_regularization
from .train import TrainResult, dreambooth_loss, train

__version__ = "0.1.0"


def cache_subject_latents(cfg, pipe=None) -> dict:
    """Encode (or reuse) the latents of the instance and class folders named in cfg; returns {'instance', 'regularization'}."""
    from .core.config import cached_dirs
    pipe = pipe or load_pipeline(cfg.model.pretrained, variant=cfg.model.variant)
    d = cfg.model.data
    inst_dir, reg_dir = cached_dirs(cfg)
    wait = cfg.trainer.wait_for_lock
    out = {"instance": cache_latents(scan_images(d.instance_dir, "model.data.instance_dir"), inst_dir, pipe.vae,
                                     d.resolution, d.center_crop, wait_for_lock=wait)}
    if cfg.model.with_prior_preservation:
        out["regularization"] = cache_latents(scan_images(d.regularization_dir, "model.data.regularization_dir"),
                                              reg_dir, pipe.vae, d.resolution, d.center_crop, wait_for_lock=wait)
    return out


__all__ = ["load_config", "generate_regularization", "cache_latents", "cache_subject_latents", "train", "sample",
           "load_pipeline", "check_model", "pick_device", "text_shift", "text_moved", "dreambooth_loss", "DreamBoothDataset", "collate", "load_image",
           "preprocess", "scan_images", "TrainResult", "DBTutorError", "ConfigError", "DataError", "TrainingError",
           "LockedError", "ROOT", "DEFAULT_CONFIG"]
