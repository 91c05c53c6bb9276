"""The course's choices, kept in WORK/course.json for the next notebooks: the profile, and what cells set for it."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import ConfigError

CHOICE_FILE = "course.json"
# The settings that name a run: each enters the training config (Course.overrides) and so the name of the run's
# folder (course.run_dir). A value a parameters cell sets for one of them is the course's, not that notebook's: the
# next notebooks use it too, so that 05-07 find the runs 02 and 06 made instead of training again.
NAMES_A_RUN = ("pretrained", "subject_dir", "identifier", "class_noun", "resolution", "num_reg_images",
               "num_images_per_prompt", "prior_loss_weight", "train_text_encoder", "lora_rank", "save_merged",
               "gradient_checkpointing", "use_8bit_adam", "sampler_steps", "guidance", "scheduler", "lr", "max_steps",
               "seed", "checkpoint_every", "precision", "variant")
# and course.setup's hub_on_drive: the Hugging Face hub cache in Drive or not
REMEMBERED = NAMES_A_RUN + ("hub_on_drive",)


def read(work: Path) -> dict:
    """WORK/course.json: {"profile": the profile a cell chose last, "settings": {profile: {setting: value}}};
    the same with nothing in it when there is no such file."""
    path = Path(work) / CHOICE_FILE
    if not path.exists():
        return {"profile": None, "settings": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); delete it and set PROFILE, SUBJECT_DIR and CLASS_NOUN "
                          "again") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings", {}), dict):
        raise ConfigError(f"{path} is not a course.json written by dbtutor; delete it and set PROFILE, SUBJECT_DIR "
                          "and CLASS_NOUN again")
    return {"profile": data.get("profile"), "settings": data.get("settings", {})}


def remembered(data: dict, profile: str) -> dict:
    """The values cells set for `profile` (REMEMBERED settings only), as stored."""
    kept = data["settings"].get(profile, {})
    if not isinstance(kept, dict):
        return {}
    return {k: v for k, v in kept.items() if k in REMEMBERED}


def remember(work: Path, profile: str, chose_profile: bool, values: dict) -> bool:
    """Keep what a parameters cell set: the profile when the cell chose it, and its REMEMBERED `values` for that
    profile. Writes WORK/course.json (atomically) only when something changed; returns whether it did."""
    from ..core.fileio import write_json
    data = read(work)
    new = {k: str(v) if isinstance(v, Path) else v for k, v in values.items() if k in REMEMBERED and v is not None}
    kept = {**remembered(data, profile), **new}
    if kept == remembered(data, profile) and (not chose_profile or data["profile"] == profile):
        return False
    data["settings"] = {**data["settings"], profile: kept}
    if chose_profile:
        data["profile"] = profile
    write_json(Path(work) / CHOICE_FILE, data)
    return True
