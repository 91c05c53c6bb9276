"""Estimate each notebook's time on a Colab T4 under the sd15 profile: its work counted, priced at a T4's speed.

    python tools/course_time.py                 # about 15 min on 2 CPU cores; writes work/course_time/course_time.json

The count is measured: every notebook runs headlessly under the sd15 profile at its default settings (steps, class
images, samples, validations), on a small random pipeline with Stable Diffusion v1.5's block layout
(dbtutor.sd15, size "small") at 64 px instead of the real model at 512 px, and every UNet evaluation (per image;
classifier-free guidance counts two), training forward pass, VAE decode and encode and pipeline load is counted.
The price is an estimate, from two sources stated in PRICES: a T4's published speed for SD v1.5 at 512 px in
float16 (diffusers' PyTorch 2.0 benchmark: txt2img, batch 1, 6.9 it/s) for one UNet evaluation, and the CPU
measurements of SD v1.5's architecture at 512 px (bench/sd15_bench.py, docs/gpu.md) for how much a training step,
a decode and an encode cost next to it. Nothing here ran on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# seconds on a T4 at 512 px, float16
UNET_EVAL = 1 / 6.9 / 2      # one image, one UNet evaluation: 6.9 txt2img steps/s at batch 1, each 2 (guidance)
PRICES = {
    "unet_eval": (UNET_EVAL, "diffusers' PyTorch 2.0 benchmark, T4, SD txt2img, batch 1, fp16: 6.9 it/s"),
    # CPU, SD v1.5 at 512 px (fp32): a PNDM step with guidance (2 evaluations) 11.5 s; a LoRA r=8 training step on
    # 1 instance + 1 class image 35 s, full fine-tuning 48.9 s; one VAE decode 17.5 s, one encode 11.4 s
    "train_lora": (UNET_EVAL * 35 / 11.5, "LoRA training step per image: 35 / 11.5 of a guided step (CPU)"),
    "train_full": (UNET_EVAL * 48.9 / 11.5, "full fine-tuning step per image: 48.9 / 11.5 of a guided step (CPU)"),
    "vae_decode": (UNET_EVAL * 2 * 17.5 / 11.5, "VAE decode per image: 17.5 / 11.5 of a guided step (CPU)"),
    "vae_encode": (UNET_EVAL * 2 * 11.4 / 11.5, "VAE encode per image: 11.4 / 11.5 of a guided step (CPU)"),
    "load": (20.0, "assumed: reading SD v1.5 (4.3 GB) from Colab's disk into the GPU"),
    "download": (60.0, "assumed: SD v1.5's 4.3 GB from the Hub, once per Colab runtime (each notebook has one)"),
}

COUNTER = r'''
import json, os, torch, diffusers
_COUNTS = {"unet_eval": 0, "train": 0, "vae_decode": 0, "vae_encode": 0, "load": 0}
def _wrap(cls, name, key, of=lambda a, k: a[0].shape[0]):
    f = getattr(cls, name)
    def g(*a, **k):
        n = of(a[1:], k)
        if key == "unet":
            _COUNTS["train" if torch.is_grad_enabled() and a[0].training else "unet_eval"] += n
        else:
            _COUNTS[key] += n
        return f(*a, **k)
    setattr(cls, name, g)
_wrap(diffusers.UNet2DConditionModel, "forward", "unet")
_wrap(diffusers.AutoencoderKL, "decode", "vae_decode")
_wrap(diffusers.AutoencoderKL, "encode", "vae_encode")
_f = diffusers.StableDiffusionPipeline.from_pretrained.__func__
diffusers.StableDiffusionPipeline.from_pretrained = classmethod(
    lambda cls, *a, **k: (_COUNTS.__setitem__("load", _COUNTS["load"] + 1), _f(cls, *a, **k))[1])
'''
DUMP = "json.dump(_COUNTS, open(os.environ['DBTUTOR_COUNTS'], 'w'))"


def count(notebook: Path, env: dict, out: Path) -> dict:
    """Run one notebook with the counter cell first and the dump cell last; return its counts."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(COUNTER))
    nb.cells.append(nbformat.v4.new_code_cell(DUMP))
    os.environ.update({**env, "DBTUTOR_COUNTS": str(out)})
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return json.loads(out.read_text())


def price(counts: dict, lora: bool) -> dict:
    """Seconds on a T4 for one notebook's counts: each kind of work at its price; the first load downloads."""
    train = PRICES["train_lora" if lora else "train_full"][0]
    parts = {"sampling": counts["unet_eval"] * PRICES["unet_eval"][0], "training": counts["train"] * train,
             "VAE": counts["vae_decode"] * PRICES["vae_decode"][0] + counts["vae_encode"] * PRICES["vae_encode"][0],
             "loading": counts["load"] * PRICES["load"][0] + (PRICES["download"][0] if counts["load"] else 0)}
    return {**parts, "total": sum(parts.values())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "course_time")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dbtutor.course import settings
    from dbtutor.memory import gpu_settings
    from dbtutor.provenance import provenance
    from dbtutor.sd15 import save_random_pipeline
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="course_time-"))
    save_random_pipeline(tmp / "small-sd15", dtype="fp32", size="small")
    t4 = gpu_settings(14.7, bnb=False, capability=(7, 5))     # what a free Colab T4 gets (bitsandbytes not there)
    env = {"DBTUTOR_PROFILE": "sd15", "DBTUTOR_PRETRAINED": str(tmp / "small-sd15"), "DBTUTOR_NB_WORK": str(tmp / "work"),
           "DBTUTOR_NB_RESOLUTION": "64", "DBTUTOR_NB_LORA_RANK": str(t4["model.lora.rank"]),
           "DBTUTOR_NB_GRADIENT_CHECKPOINTING": str(t4["model.gradient_checkpointing"]).lower()}
    c = settings("sd15")
    rows, t0 = [], time.time()
    for nb in NOTEBOOKS:
        counts = count(nb, env, args.out / f"{nb.stem}.json")
        rows.append({"notebook": nb.stem, "counts": counts, "seconds": price(counts, t4["model.lora.rank"] > 0)})
        print(f"{nb.stem:40s} {rows[-1]['seconds']['total'] / 60:5.1f} min  {counts}", flush=True)
    total = sum(r["seconds"]["total"] for r in rows)
    result = {"kind": "course_time", "profile": "sd15", "t4_settings": t4,
              "settings": {k: str(v) for k, v in c.settings.items()},
              "prices": {k: {"seconds": v, "basis": b} for k, (v, b) in PRICES.items()},
              "notebooks": rows, "total_minutes": total / 60, "counted_in_seconds": time.time() - t0,
              "provenance": provenance()}
    (args.out / "course_time.json").write_text(json.dumps(result, indent=1))
    print(f"the whole course: {total / 60:.0f} min on a T4 (estimated); {args.out / 'course_time.json'}")


if __name__ == "__main__":
    main()
