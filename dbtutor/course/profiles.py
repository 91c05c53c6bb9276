"""The course's shared setup: a profile (toy or sd15) sets every default; choices kept, WORK, device, measuring."""
from __future__ import annotations

import gc
import os
import re
import warnings
from pathlib import Path

import torch

from ..core.config import ROOT
from ..core.errors import ConfigError
from . import choices, colab
from .choices import CHOICE_FILE
from .quiet import no_progress_bars, quiet_libraries  # noqa: F401  (the notebooks' and widgets' names for them)
from .run_folders import model_tag, run_config, run_dir, train_run  # noqa: F401  (idem)

ENV_PREFIX, PROFILE_ENV = "DBTUTOR_NB_", "DBTUTOR_PROFILE"
ALLOW_CPU_ENV = "DBTUTOR_ALLOW_CPU"      # =1: setup runs a GPU profile on a CPU anyway (CI, a patient learner)
# Every setting of the course. "toy": the embedded model on any CPU. "sd15": Stable Diffusion v1.5 on a GPU with the
# DreamBooth paper's dog at diffusers' settings (lr, guidance), made to fit a free Colab session (LoRA, fewer class
# images and steps, 2 validation prompts every 200 steps); on a GPU also its fp16 files and the card's precision.
PROFILES = {
    "toy": dict(
        pretrained=ROOT / "data/models/toyworld", subject_dir=ROOT / "data/subjects/twotone_ball",
        identifier="sks", class_noun="ball", scene="on the snow", colour="red", resolution=64,
        max_steps=500, lr=1e-4, prior_loss_weight=1.0, train_text_encoder=False, seed=0,
        num_reg_images=200, num_images_per_prompt=25, variant="", precision="32",
        lora_rank=0, gradient_checkpointing=False, use_8bit_adam=False, save_merged=True, checkpoint_every=0,
        samples_per_prompt=8, sampler_steps=20, guidance=5.0, scheduler="dpm", sample_batch=25,
        validation_every=100, validation_images=4, validation_scene=True),
    "sd15": dict(
        pretrained="stable-diffusion-v1-5/stable-diffusion-v1-5", subject_dir=ROOT / "data/dog6",
        identifier="sks", class_noun="dog", scene="on the beach", colour="black", resolution=512,
        max_steps=400, lr=1e-4, prior_loss_weight=1.0, train_text_encoder=False, seed=0,
        num_reg_images=50, num_images_per_prompt=4, variant="", precision="32",
        lora_rank=16, gradient_checkpointing=True, use_8bit_adam=False, save_merged=False, checkpoint_every=100,
        samples_per_prompt=4, sampler_steps=20, guidance=7.5, scheduler="dpm", sample_batch=4,
        validation_every=200, validation_images=1, validation_scene=False),
}
# the keys decided on a CUDA machine (gpu_settings, and the fp16 weights), as config key -> setting
GPU_KEYS = {"model.lora.rank": "lora_rank", "model.gradient_checkpointing": "gradient_checkpointing", "optim.lr": "lr",
            "optim.use_8bit_adam": "use_8bit_adam", "trainer.precision": "precision", "model.variant": "variant"}


def setting(name: str, default):
    """`default`, unless the environment sets DBTUTOR_NB_<NAME>; parsed to the type of `default`
    (int, float, bool, str, Path, or a list given as comma-separated values)."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw.strip() == "":
        return default
    return typed(raw, default, f"{ENV_PREFIX}{name.upper()}={raw.strip()!r}")


def typed(raw, default, where: str):
    """`raw` (text, or a value read from JSON) as the type of `default`; a ConfigError naming `where` if it is not."""
    raw = str(raw).strip()
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, (list, tuple)):
            kind = type(default[0]) if default else float
            return [kind(v.strip()) for v in raw.split(",") if v.strip()]
        if isinstance(default, Path):
            return Path(raw)
        return type(default)(raw)
    except ValueError:
        raise ConfigError(f"{where} is not a valid {type(default).__name__}") from None


class Course:
    """One profile's settings, readable as attributes (C.max_steps), with what the notebooks derive from them."""

    def __init__(self, profile: str, settings: dict, sources: dict, work: Path, device: torch.device,
                 dtype: torch.dtype):
        self.profile, self.settings, self.sources = profile, settings, sources
        self.work, self.device, self.dtype = work, device, dtype

    def __getattr__(self, name):
        try:
            return self.__dict__["settings"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def instance_prompt(self) -> str:
        return f"a photo of {self.identifier} {self.class_noun}"

    @property
    def class_prompt(self) -> str:
        article = "an" if self.class_noun[:1].lower() in "aeiou" else "a"
        return f"a photo of {article} {self.class_noun}"

    @property
    def prompts(self) -> list[str]:
        """The subject somewhere new, and the bare class: the two rows every comparison shows."""
        return [f"{self.instance_prompt} {self.scene}", self.class_prompt]

    @property
    def seeds(self) -> list[int]:
        return list(range(1000, 1000 + self.samples_per_prompt))

    @property
    def reg_dir(self) -> Path:
        noun = re.sub(r"[^a-z0-9]+", "-", self.class_noun.lower()).strip("-") or "class"
        return self.work / "reg" / f"{noun}-{model_tag(self.pretrained)}"

    @property
    def overrides(self) -> dict:
        """The training config of this course (dotted keys): every notebook trains from it, so a run one notebook
        made is found by the next (its output folder is named after the whole config, see run_dir)."""
        return {
            "model.pretrained": str(self.pretrained), "model.data.instance_dir": str(self.subject_dir),
            "model.data.instance_prompt": self.instance_prompt, "model.data.regularization_dir": str(self.reg_dir),
            "model.data.regularization_prompt": self.class_prompt, "model.data.num_reg_images": self.num_reg_images,
            "model.data.num_images_per_prompt": self.num_images_per_prompt,
            "model.data.resolution": self.resolution, "model.with_prior_preservation": True,
            "model.prior_loss_weight": self.prior_loss_weight, "model.train_text_encoder": self.train_text_encoder,
            "model.lora.rank": self.lora_rank, "model.lora.save_merged": self.save_merged,
            "model.gradient_checkpointing": self.gradient_checkpointing,
            "model.sampling.num_inference_steps": self.sampler_steps, "model.sampling.guidance_scale": self.guidance,
            "model.sampling.scheduler": self.scheduler, "optim.lr": self.lr, "model.variant": self.variant or None,
            **({"optim.use_8bit_adam": True} if self.use_8bit_adam else {}),
            "trainer.max_steps": self.max_steps, "trainer.seed": self.seed, "trainer.precision": self.precision,
            "trainer.device": self.device.type, "trainer.checkpoint_every": self.checkpoint_every,
            "trainer.validation.every": self.validation_every, "trainer.validation.num_images": self.validation_images,
            **({} if self.validation_scene else          # the two prompts notebook 06 reads
               {"trainer.validation.prompts": [self.instance_prompt, self.class_prompt]}),
        }

    def load_pipeline(self, pretrained=None):
        """The base model (or `pretrained`) for sampling: fp16 on a GPU, float32 on a CPU (DBTUTOR_NB_DTYPE)."""
        from ..models.pipeline import load_pipeline
        return load_pipeline(pretrained or self.pretrained, self.device, self.dtype, self.variant or None)

    def ready(self, pipe):
        """A trained pipeline (train() returns it in float32) moved to this course's device and sampling dtype."""
        return pipe.to(self.device, self.dtype)

    def sample_rows(self, pipe, prompts: list[str], seeds: list[int] | None = None) -> list:
        """For each prompt, one image per seed (the same seeds for every prompt), at this course's sampler."""
        return sample_rows(pipe, prompts, self.seeds if seeds is None else seeds, self.sampler_steps, self.guidance,
                           self.scheduler, self.sample_batch)

    def train(self, changes: dict | None = None, progress: bool = True, callback=None):
        """dbtutor.train on this course's config (plus `changes`), into run_dir: a finished run is reused."""
        from ..measuring.measure import fetch
        fetch(self.subject_dir)                         # DINOv2 first: validations of real photos score from step 0
        return train_run({**self.overrides, **(changes or {})}, self.work, progress=progress, callback=callback)

    def measure(self):
        """The course's measuring stick for this subject: the toy world's judge, or DINOv2 (None, said in one line,
        where its weights cannot be loaded)."""
        from ..measuring.measure import measurer
        return measurer(self.subject_dir, device=self.device)

    def table(self) -> str:
        names = ("pretrained", "subject_dir", "class_noun", "resolution", "max_steps", "lr", "lora_rank",
                 "num_reg_images", "prior_loss_weight", "samples_per_prompt", "sampler_steps", "guidance")
        rows = [f"  {n:18s} {self.settings[n]!s:52s} {self.sources.get(n, 'profile')}" for n in names]
        return "\n".join(rows)

    def origins(self) -> str:
        """The settings that are not the profile's, grouped by where they came from: "lr=5e-05, max_steps=800
        (an earlier notebook); resolution=64 (environment)"."""
        by: dict[str, list[str]] = {}
        for key, source in sorted(self.sources.items()):
            if key in self.settings:
                by.setdefault(source, []).append(f"{key}={self.settings[key]}")
        return "; ".join(f"{', '.join(keys)} ({source})" for source, keys in by.items())


def free_memory():
    """Give back what deleted pipelines held (the GPU keeps freed blocks cached until asked)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def settings(profile: str | None = None, work: Path | None = None, **cell) -> Course:
    """Every setting of the course: the profile's defaults, then what cells of earlier notebooks set for it
    (WORK/course.json), then DBTUTOR_NB_<NAME> from the environment, then the values this notebook's parameters
    cell sets (None = not set). The profile is the argument, else DBTUTOR_PROFILE, else the one an earlier notebook
    chose, else "toy". Writes nothing and refuses nothing (also for display and tools: see setup)."""
    work = Path(work or os.environ.get(ENV_PREFIX + "WORK") or ROOT / "work/notebooks")
    chosen = choices.read(work)
    name = profile or os.environ.get(PROFILE_ENV) or chosen["profile"] or "toy"
    said = ("this notebook" if profile else PROFILE_ENV if os.environ.get(PROFILE_ENV) else
            "an earlier notebook" if chosen["profile"] else "the default")
    if name not in PROFILES:
        raise ConfigError(f"profile {name!r} is not one of {', '.join(PROFILES)} (PROFILE or {PROFILE_ENV})")
    unknown = sorted(set(cell) - set(PROFILES[name]))
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is no setting of the course; the settings are "
                          f"{', '.join(sorted(PROFILES[name]))}")
    from ..models.pipeline import pick_device
    device = pick_device()
    values, sources = dict(PROFILES[name]), {"profile": said}
    for key, v in choices.remembered(chosen, name).items():
        if key in values:
            where = f"{work / CHOICE_FILE}: {name} {key}={v!r}"
            values[key], sources[key] = typed(v, PROFILES[name][key], where), "an earlier notebook"
    if os.environ.get("DBTUTOR_PRETRAINED"):
        values["pretrained"], sources["pretrained"] = os.environ["DBTUTOR_PRETRAINED"], "DBTUTOR_PRETRAINED"
    for key, default in PROFILES[name].items():
        got = setting(key, default)
        if got != default:
            values[key], sources[key] = got, "environment"
    for key, v in cell.items():
        if v is not None:
            values[key], sources[key] = v, "this notebook"
    if device.type == "cuda" and name != "toy":     # LoRA on every GPU, full fine-tuning when asked (lora_rank 0)
        from ..models.memory import gpu_settings
        kind = "lora" if values["lora_rank"] else "full"
        gpu = {**gpu_settings(train_text_encoder=values["train_text_encoder"], kind=kind), "model.variant": "fp16"}
        values["gpu_why"] = gpu["why"] + ("; lora_rank=0 asks for full fine-tuning" if kind == "lora" else "")
        for key, setting_name in GPU_KEYS.items():
            if setting_name not in sources:                 # what the environment or this notebook set stays
                values[setting_name], sources[setting_name] = gpu[key], "this GPU"
    if name != "toy" and values["lora_rank"] == 0 and "checkpoint_every" not in sources:   # 3x the UNet: not Drive's
        values["checkpoint_every"], sources["checkpoint_every"] = 0, "full fine-tuning"
    values["subject_dir"] = Path(values["subject_dir"]).expanduser()
    dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[
        setting("dtype", "float16" if device.type == "cuda" else "float32")]
    return Course(name, values, sources, work, device, dtype)


def setup(profile: str | None = None, drive: bool | None = None, subject_dir=None, class_noun=None,
          hub_on_drive: bool | None = None, **cell) -> Course:
    """settings() for a notebook, plus what its first cell needs: library noise quieted; on Colab, WORK in Google
    Drive (drive = WORK_ON_DRIVE: None = yes on Colab, False = no) with the course kept there for the next
    runtimes, and the Hugging Face hub cache too (hub_on_drive: None = an earlier notebook's choice, else yes for
    a profile that downloads its model); what this cell set, remembered for the next notebooks; a GPU profile
    refused on a machine without a GPU (SystemExit: one line, no traceback) unless DBTUTOR_ALLOW_CPU=1; and lines
    saying what was chosen and where each setting not the profile's came from."""
    quiet_libraries()
    if colab.in_colab():
        colab.enable_widgets()
    home = colab.drive_home(drive)                   # MyDrive/dbtutor, Drive mounted; None: this machine's disk
    if home is not None:
        colab.keep_course(ROOT, home)
    cell = {"subject_dir": subject_dir, "class_noun": class_noun, **cell}
    c = settings(profile, work=home / "work" if home is not None else None, **cell)
    choices.remember(c.work, c.profile, profile is not None, {**cell, "hub_on_drive": hub_on_drive})
    if c.profile != "toy" and c.device.type == "cpu" and os.environ.get(ALLOW_CPU_ENV) != "1":
        warnings.filterwarnings("ignore", message="To exit: use")    # IPython's hint after a SystemExit: not here
        raise SystemExit(f"dbtutor: the {c.profile} profile needs a GPU and this runtime has none. On Colab: Runtime "
                         "→ Change runtime type → T4 GPU, then run this notebook again (what you chose is kept"
                         f"{' in Drive' if home is not None else ''}); {ALLOW_CPU_ENV}=1 runs it on the CPU anyway "
                         "(hours)")
    if hub_on_drive is None:
        kept = choices.remembered(choices.read(c.work), c.profile).get("hub_on_drive", c.profile != "toy")
        hub_on_drive = typed(kept, True, f"{c.work / CHOICE_FILE}: {c.profile} hub_on_drive={kept!r}")
    if home is not None and hub_on_drive and colab.keep_hub_cache(home / "hub"):
        print(f"hub cache in Drive ({home / 'hub'}): models are fetched once for the course, not in every runtime "
              "(SD v1.5: 2.1 GB of Drive in fp16, 4.3 GB in float32; course.setup(..., hub_on_drive=False): not)")
    if subject_dir and "class_noun" not in c.sources:          # the profile's noun for the learner's photos
        print(f"SUBJECT_DIR is your folder: set CLASS_NOUN to what it shows (now {c.class_noun!r})")
    if "gpu_why" in c.settings:
        print(f"GPU settings: {c.gpu_why}")
    print(f"profile {c.profile} ({c.sources['profile']}): {c.instance_prompt!r} / {c.class_prompt!r} on {c.device} "
          f"({str(c.dtype)[6:]}); WORK {c.work}")
    if c.origins():
        print(f"  not the profile's: {c.origins()}")
    return c


def sample_rows(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0,
                scheduler: str = "dpm", batch_size: int = 25) -> list:
    """For each prompt, one image per seed (the same seeds for every prompt), prompt after prompt."""
    from ..models.pipeline import sample
    return sample(pipe, [p for p in prompts for _ in seeds], [int(s) for s in seeds] * len(prompts), steps, guidance,
                  scheduler, batch_size=batch_size)


def token_split(tokenizer, text: str) -> list[tuple[str, int]]:
    """How the tokenizer cuts `text`: (token, id) pairs, without the start and end tokens."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return list(zip(tokenizer.convert_ids_to_tokens(ids), ids))


def identifier_report(tokenizer, identifier: str, class_noun: str) -> dict:
    """The prompts built from an identifier and a class noun, and how each is tokenized."""
    identifier, class_noun = identifier.strip(), class_noun.strip()
    article = "an" if class_noun[:1].lower() in "aeiou" and class_noun else "a"
    instance_prompt = f"a photo of {identifier} {class_noun}"
    return {"identifier": identifier, "class_noun": class_noun,
            "identifier_tokens": token_split(tokenizer, identifier),
            "instance_prompt": instance_prompt, "instance_tokens": token_split(tokenizer, instance_prompt),
            "class_prompt": f"a photo of {article} {class_noun}"}
