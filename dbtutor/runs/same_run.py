"""What makes two runs the same: the config keys that define the training, compared one way, and the base model's
weights.

One definition, used wherever dbtutor asks "is this the same training?":

    checkpoint.latest      resume from a checkpoint only if it was trained with the same training config
    resume.saved_run       continue (or reuse, when finished) the pipeline saved in output_dir only if the same
    ablate.check_same      reuse a finished variant's eval.json only if the same, plus what its result also depends
                           on (its steps, the base model's weights, the evaluation's settings)
    validation.settings    keep a resumed run's earlier validations only if the same

The course's run folders are named by a hash of a wider set of keys (course.run_dir); that name only says where a
run lives: whether its contents can be reused is decided here, by resume.saved_run.
"""
from __future__ import annotations


from omegaconf import OmegaConf


# Keys that do not make two runs different trainings: where the files are (output_dir, the data and cache folders,
# the base model's path and which of its files: model.variant's fp16 files differ from the main ones by rounding),
# how long it runs (trainer.max_steps: a longer run continues a shorter one), how it computes
# (precision, device, compile, memory layout, attention kernel, gradient checkpointing: the same updates, up to
# rounding; e.g. a run stopped by a non-finite loss in fp16 continues with trainer.precision=32), and what it shows
# or keeps on the way (progress, validation samples, trackers, checkpoints, the sampler settings of class images
# and samples, whether a LoRA run also saves the merged pipeline). A key that names a section covers all its keys.
NOT_TRAINING = frozenset({
    "output_dir", "model.pretrained", "model.variant", "model.data.instance_dir", "model.data.regularization_dir",
    "model.data.cached_instance_dir", "model.data.cached_reg_dir", "model.data.num_workers",
    "trainer.max_steps", "trainer.precision", "trainer.device", "model.compile", "model.channels_last",
    "model.gradient_checkpointing", "model.attention",
    "trainer.progress", "trainer.validation", "trainer.log_with", "trainer.checkpoint_every", "trainer.resume",
    "trainer.keep_checkpoints", "trainer.wait_for_lock", "model.sampling", "model.lora.save_merged"})


def flatten(tree: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested dict's leaves, in order (a config as its records keep it)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _not_training(key: str) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in NOT_TRAINING for n in range(1, len(parts) + 1))


def training_config(cfg) -> dict:
    """{dotted key: value} of the keys that define the training trajectory: every key but NOT_TRAINING's. Two runs
    are the same training when these are equal (changed_keys is empty). `cfg`: a config, or a dict of it (nested,
    or flat with dotted keys, as records keep it)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    return {k: v for k, v in flatten(tree).items() if not _not_training(k)}


def changed_keys(saved: dict, now: dict) -> list[str]:
    """The keys whose values differ between a saved record and now, sorted. A key missing from the saved one (added
    to dbtutor after that run was saved) counts as its default value."""
    from ..core.config import defaults
    was = {k: OmegaConf.select(defaults(), k, default=None) for k in set(now) - set(saved)}
    was.update(saved)
    return sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
