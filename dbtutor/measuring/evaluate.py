"""Measure DreamBooth as the paper does: subject fidelity, prompt fidelity, PRES (language drift) and DIV (diversity).

DreamBooth (Ruiz et al., CVPR 2023, Sec. 4.1 and Table 3) samples a fixed set of prompts from the trained model and
compares the samples with the real subject images:

    subject fidelity   mean cosine similarity between embeddings of subject-prompt samples and the real images
                       (DINO, and CLIP-I with the CLIP image encoder)                       higher is better
    prompt fidelity    CLIP-T: cosine of the prompt's CLIP text embedding and the sample's   higher is better
    PRES               subject fidelity of samples of the *bare class* prompt ("a photo of a ball"): how much the
                       class has drifted toward the subject (language drift)                 lower is better
    DIV                mean pairwise distance among samples of the same prompt               higher is better

Two back ends:
    judge   the toy world's judge (dbtutor/toyworld/judge.py) embeds the images, and also *names* their object,
            colour, scene and look, so fidelity can be read as agreement: the share of subject samples it calls the
            subject (subject_attr), of samples whose object/colour/scene match the prompt's words (prompt_attr), and
            of class samples it calls the subject's look (pres_attr).
    clip    CLIP (CLIP-I, CLIP-T) and DINOv2 (DINO, PRES, DIV) loaded with from_pretrained, for real photos
            (dbtutor.measuring.encoders: here both are loaded before any sampling).

DIV: the paper uses LPIPS distance. LPIPS needs AlexNet/VGG weights trained on ImageNet (the `lpips` package,
torchvision); neither is installed here and no weights can be downloaded. We use 1 - cosine similarity of the
same embeddings as subject fidelity (judge or DINOv2): it also falls to 0 when every sample is the same image, and
it measures what DIV is for (do the samples differ in what matters), but its values are not comparable with
the paper's LPIPS numbers.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.config import ROOT
from ..core.errors import ConfigError
from .encoders import CLIP_MEAN, CLIP_MODEL, CLIP_STD, DINO_MODEL, Encoders, to_pixels  # noqa: F401 (re-exported)
from .prompts import (PAPER_PROMPTS, PROPERTY_COLORS, PromptSet, agreement, paper_prompts,  # noqa: F401 (re-exported)
                      prompt_attributes, prompt_set, split_prompts, world_prompts)

DEFAULT_JUDGE = ROOT / "data" / "models" / "toyworld-judge"
# sampling seeds: far from the class images' seeds (trainer.seed * 1_000_003 + index), whose noise the prior loss
# trains the model to reproduce
EVAL_SEED = 500_000
# name: (what, better), in the order of the printed table
METRICS = {
    "subject_sim": ("subject fidelity: embedding cosine, subject samples vs real images (DINO)", "higher"),
    "subject_attr": ("subject fidelity: share of subject samples the judge calls the subject", "higher"),
    "clip_i": ("subject fidelity: CLIP image-embedding cosine (CLIP-I)", "higher"),
    "prompt_attr": ("prompt fidelity: share of samples whose object/colour/scene match the prompt", "higher"),
    "clip_t": ("prompt fidelity: CLIP text-image cosine (CLIP-T)", "higher"),
    "pres": ("PRES: embedding cosine, bare-class samples vs real subject images", "lower"),
    "pres_attr": ("PRES: share of bare-class samples judged the subject's look", "lower"),
    "bind_attr": ("binding: share of samples of the instance and scene prompts judged the subject", "higher"),
    "bind_scene": ("binding: of those judged the subject in a scene prompt, share in the prompt's scene", "higher"),
    "class_colors": ("colour spread of the bare-class samples (normalised entropy of judged colours)", "higher"),
    "div": ("DIV: mean pairwise (1 - cosine) among samples of one subject prompt", "higher"),
    "div_class": ("DIV of the bare-class samples", "higher"),
    "real_sim": ("reference: embedding cosine among the real images themselves", ""),
}


# ----------------------------------------------------------------------------- metrics on embeddings

def cross_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs (a_i, b_j) of two sets of embeddings (normalised here)."""
    return float((F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T).mean())


def self_similarity(a: torch.Tensor) -> float:
    """Mean cosine similarity over the pairs i < j of one set (needs two or more)."""
    if len(a) < 2:
        raise ValueError("a within-set similarity needs at least two images")
    s = F.normalize(a.float(), dim=1) @ F.normalize(a.float(), dim=1).T
    i, j = torch.triu_indices(len(a), len(a), offset=1)
    return float(s[i, j].mean())


def diversity(a: torch.Tensor) -> float:
    """DIV: mean pairwise (1 - cosine) among images of one prompt; 0 when they are all the same image."""
    return 1.0 - self_similarity(a)


# ----------------------------------------------------------------------------- back ends

def load_judge_or_fail(folder):
    from ..toyworld.judge import load_judge
    try:
        return load_judge(folder)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"judge {folder}: {e}; or pass another judge folder (--judge)") from None


def resize_all(images, size: int) -> list[Image.Image]:
    return [im.convert("RGB") if im.size == (size, size) else im.convert("RGB").resize((size, size), Image.BICUBIC)
            for im in images]


def score_judge(samples: dict, real: list, ps: PromptSet, judge) -> tuple[dict, dict]:
    """Metrics and a per-prompt breakdown from the judge's embeddings and attribute readings."""
    from ..toyworld import judge as J
    from ..toyworld.quality import normalised_entropy
    from ..toyworld.world import COLORS, SIZE
    real = resize_all(real, SIZE)
    e_real = J.embed(judge, real)
    per, subj_e, subj_ok, prompt_ok, divs, bind, scene_ok = {}, [], [], [], [], [], []
    for p, group in zip(ps.subject, ps.groups):
        ims = resize_all(samples[p], SIZE)
        e, seen, want = J.embed(judge, ims), J.predict(judge, ims), prompt_attributes(p)
        is_subj = [float(seen["look"][i] == ps.look and seen["object"][i] == ps.object) for i in range(len(ims))]
        agree = [agreement(want, seen, i) for i in range(len(ims))]
        per[p] = {"subject_sim": cross_similarity(e, e_real), "subject_attr": float(np.mean(is_subj)),
                  "prompt_attr": float(np.mean(agree)), "div": diversity(e) if len(ims) > 1 else float("nan")}
        subj_e.append(e)
        subj_ok += is_subj
        prompt_ok += agree
        if group in ("instance", "recontext"):
            bind += is_subj
            scene_ok += [float(seen["scene"][i] == want["scene"]) for i in range(len(ims)) if is_subj[i] and "scene" in want]
        divs.append(per[p]["div"])
    cls = resize_all(samples[ps.class_prompt], SIZE)
    e_cls, seen = J.embed(judge, cls), J.predict(judge, cls)
    drift = [float(v == ps.look) for v in seen["look"]]
    m = {"subject_sim": cross_similarity(torch.cat(subj_e), e_real), "subject_attr": float(np.mean(subj_ok)),
         "prompt_attr": float(np.mean(prompt_ok)), "pres": cross_similarity(e_cls, e_real),
         "pres_attr": float(np.mean(drift)), "div": float(np.mean(divs)),
         "div_class": diversity(e_cls) if len(cls) > 1 else float("nan"),
         "bind_attr": float(np.mean(bind)) if bind else float("nan"),
         "bind_scene": float(np.mean(scene_ok)) if scene_ok else float("nan"),
         "class_colors": normalised_entropy(seen["color"], list(COLORS)),
         "real_sim": self_similarity(e_real) if len(real) > 1 else float("nan")}
    per[ps.class_prompt] = {"pres": m["pres"], "pres_attr": m["pres_attr"], "div": m["div_class"],
                            "colors": {k: seen["color"].count(k) for k in sorted(set(seen["color"]))},
                            "looks": {k: seen["look"].count(k) for k in sorted(set(seen["look"]))}}
    return m, per


def score_clip(samples: dict, real: list, ps: PromptSet, enc: Encoders) -> tuple[dict, dict]:
    """DINO, CLIP-I, CLIP-T, PRES and DIV. CLIP-T reads the prompt without the identifier, which CLIP never learnt."""
    d_real, c_real = enc.dino_images(real), enc.clip_images(real)
    texts = [" ".join(w for w in p.split() if w.lower() != ps.identifier) for p in ps.subject]
    t_emb = enc.clip_texts(texts)
    per, d_all, c_all, clip_t, divs = {}, [], [], [], []
    for k, p in enumerate(ps.subject):
        d, c = enc.dino_images(samples[p]), enc.clip_images(samples[p])
        ct = (c @ t_emb[k]).tolist()
        per[p] = {"subject_sim": cross_similarity(d, d_real), "clip_i": cross_similarity(c, c_real),
                  "clip_t": float(np.mean(ct)), "div": diversity(d) if len(d) > 1 else float("nan")}
        d_all.append(d)
        c_all.append(c)
        clip_t += ct
        divs.append(per[p]["div"])
    d_cls = enc.dino_images(samples[ps.class_prompt])
    m = {"subject_sim": cross_similarity(torch.cat(d_all), d_real), "clip_i": cross_similarity(torch.cat(c_all), c_real),
         "clip_t": float(np.mean(clip_t)), "pres": cross_similarity(d_cls, d_real), "div": float(np.mean(divs)),
         "div_class": diversity(d_cls) if len(d_cls) > 1 else float("nan"),
         "real_sim": self_similarity(d_real) if len(real) > 1 else float("nan")}
    per[ps.class_prompt] = {"pres": m["pres"], "div": m["div_class"]}
    return m, per


# ----------------------------------------------------------------------------- sampling and the whole evaluation

def generate(pipe, ps: PromptSet, num_samples: int = 4, class_samples: int = 32, seed: int = EVAL_SEED,
             num_inference_steps: int = 20, guidance_scale: float = 5.0, scheduler: str = "dpm") -> dict:
    """{prompt: images}: num_samples per subject prompt, class_samples for the class prompt, with seeds
    seed, seed + 1, ... for every prompt, so two models are compared on the very same noise."""
    from ..models.pipeline import sample
    prompts = [p for p in ps.subject for _ in range(num_samples)] + [ps.class_prompt] * class_samples
    seeds = [seed + i for _ in ps.subject for i in range(num_samples)] + [seed + i for i in range(class_samples)]
    images = sample(pipe, prompts, seeds, num_inference_steps, guidance_scale, scheduler)
    out = {p: images[k * num_samples:(k + 1) * num_samples] for k, p in enumerate(ps.subject)}
    out[ps.class_prompt] = images[len(ps.subject) * num_samples:]
    return out


def evaluate(model, subject_dir, *, backend: str = "judge", num_samples: int = 4, class_samples: int = 32,
             seed: int = EVAL_SEED, num_inference_steps: int = 20, guidance_scale: float = 5.0, scheduler: str = "dpm",
             instance_prompt: str | None = None, class_prompt: str | None = None, judge_dir=DEFAULT_JUDGE,
             clip_model: str = CLIP_MODEL, dino_model: str = DINO_MODEL, device="cpu", grid=None) -> dict:
    """Sample the prompt set from `model` (a pipeline folder or a loaded pipeline) and score it against the real
    images in `subject_dir`. Returns {'metrics', 'per_prompt', 'settings', 'seconds'}; `grid`: also save the
    samples as an image grid there (one row per prompt). Every setting after `subject_dir` is given by name."""
    from ..core.images import load_image, scan_images
    t0 = time.time()
    if backend not in ("judge", "clip"):
        raise ConfigError(f"backend={backend} is not one of judge, clip")
    if num_samples < 2 or class_samples < 2:
        raise ConfigError("num_samples and class_samples must be at least 2 (DIV compares samples of one prompt)")
    ps = prompt_set(subject_dir, instance_prompt, class_prompt)
    if backend == "judge" and ps.look is None:
        raise ConfigError(f"backend=judge needs a toy-world subject (a folder with subject.json); {subject_dir} has "
                          "none: use backend=clip")
    scorer = load_judge_or_fail(judge_dir) if backend == "judge" else Encoders(clip_model, dino_model, device)
    real = [load_image(p) for p in scan_images(subject_dir, "the subject folder")]
    pipe = model
    if isinstance(model, (str, Path)):
        from ..models.pipeline import load_trained, sampling_dtype
        pipe = load_trained(model, device=device, dtype=sampling_dtype(device))
    samples = generate(pipe, ps, num_samples, class_samples, seed, num_inference_steps, guidance_scale, scheduler)
    metrics, per = score_judge(samples, real, ps, scorer) if backend == "judge" else score_clip(samples, real, ps, scorer)
    if grid is not None:
        from ..core.figures import save_grid
        rows = ps.subject + [ps.class_prompt]
        ims = [im for p in rows for im in samples[p][:num_samples]]
        save_grid(ims, grid, rows=len(rows), row_labels=rows)
    settings = {"backend": backend, "model": str(model) if isinstance(model, (str, Path)) else "<pipeline>",
                "subject_dir": str(subject_dir), "num_samples": num_samples, "class_samples": class_samples,
                "seed": seed, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                "scheduler": scheduler, "prompts": ps.subject, "groups": ps.groups, "class_prompt": ps.class_prompt,
                "scorer": str(judge_dir) if backend == "judge" else [str(clip_model), str(dino_model)]}
    return {"metrics": metrics, "per_prompt": per, "settings": settings, "seconds": time.time() - t0}


def format_table(metrics: dict) -> str:
    """The metrics as an aligned text table with what each measures and which direction is better."""
    rows = [(k, f"{metrics[k]:.3f}", METRICS[k][1], METRICS[k][0]) for k in METRICS if k in metrics]
    w = [max(len(r[i]) for r in rows + [("metric", "value", "better", "")]) for i in range(3)]
    lines = [f"{'metric':<{w[0]}}  {'value':>{w[1]}}  {'better':<{w[2]}}  what"]
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)
