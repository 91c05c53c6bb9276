"""Estimate the course's time on a Colab T4 under the sd15 profile: each notebook's work counted, then priced twice.

    python tools/course_time.py                       # about 15 min on 2 CPU cores: work/course_time/course_time.json
    python tools/course_time.py --measure-load work/sd15-random    # the load price, measured (bench/sd15_random.py)

The count is measured: every notebook runs headlessly, each in a fresh process as each Colab notebook runs in a
runtime of its own, under the sd15 profile at its default settings (steps, class images, samples, validations)
with one work folder kept between them (Drive), on a small random pipeline with Stable Diffusion v1.5's block layout
(dbtutor.models.sd15, size "small") at 64 px instead of the real model at 512 px. Counted: every UNet evaluation (per
image; classifier-free guidance counts two; those of the samples along the way apart), training forward pass (per
image), VAE decode and encode, and pipeline load; and per runtime one install, one Drive mount and, where the
notebook loads the model, one fetch of its weights.

The price is an estimate (nothing here ran on a GPU), made twice. "benchmark": one guided 512 px step at 6.9 it/s,
a T4's best published speed for SD v1.5 in float16 (diffusers' PyTorch 2.0 benchmark: txt2img, batch 1); training
steps, decodes and encodes at their ratio to a guided step measured on a CPU with SD v1.5's architecture
(bench/sd15_bench.py, docs/gpu.md); loads, fetches, installs and the Drive mount at the times in PRICES.
"conservative": a guided step at 4 it/s and every other price scaled by the same 6.9 / 4. The conservative total
is the course's estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SPEEDS = {"benchmark": 6.9, "conservative": 4.0}   # guided txt2img steps per second on a T4 (512 px, fp16, batch 1)
STEP = 1 / SPEEDS["benchmark"]                     # seconds of one guided step: two UNet evaluations of one image
# Prices at the benchmark speed, in seconds; the conservative estimate multiplies each by 6.9 / 4.
PRICES = {
    "unet_eval": (STEP / 2, "one UNet evaluation of one 512 px image: half a guided step at 6.9 it/s (diffusers' "
                            "PyTorch 2.0 benchmark, T4, SD v1.5 txt2img, batch 1, fp16)"),
    # CPU, SD v1.5's architecture at 512 px (fp32): a guided PNDM step 11.5 s; a training step on 1 instance + 1
    # class image, LoRA r=8 35 s, full fine-tuning 48.9 s; one VAE decode 17.5 s, one encode 11.4 s
    "train_lora": (STEP * 35 / 11.5 / 2, "LoRA training, per image: 35 / 11.5 of a guided step per 2 images (CPU)"),
    "train_full": (STEP * 48.9 / 11.5 / 2, "full fine-tuning, per image: 48.9 / 11.5 of a guided step per 2 images "
                                          "(CPU)"),
    "vae_decode": (STEP * 17.5 / 11.5, "VAE decode per image: 17.5 / 11.5 of a guided step (CPU)"),
    "vae_encode": (STEP * 11.4 / 11.5, "VAE encode per image: 11.4 / 11.5 of a guided step (CPU)"),
    "load": (8.0, "measured: dbtutor.load_pipeline of SD v1.5's architecture from fp16 files into float32, on one "
                  "CPU thread, libraries imported and files read once before (python tools/course_time.py "
                  "--measure-load work/sd15-random: 7.8 s on a busy machine)"),
    "fetch": (30.0, "assumed: SD v1.5's fp16 weights (2.13 GB) at 70 MB/s, from the Hub or from the hub cache in "
                    "Drive, once per runtime that loads the model"),
    "install": (20.0, "assumed: the install cell, most libraries preinstalled on Colab (measured here: 5 s with "
                      "every library present, 3 s to download the ones Colab may lack), once per runtime"),
    "drive": (15.0, "assumed: mounting Drive, its permission dialog clicked through, once per runtime"),
}

COUNTER = r'''
import json, os, torch, diffusers
import dbtutor.runs.validation as _validation
_COUNTS = {"unet_eval": 0, "validation_eval": 0, "train": 0, "vae_decode": 0, "validation_decode": 0,
           "vae_encode": 0, "load": 0}
_IN_VALIDATION = [False]
def _wrap(cls, name, key, of=lambda a, k: a[0].shape[0]):
    f = getattr(cls, name)
    def g(*a, **k):
        n = of(a[1:], k)
        if key == "unet":
            key_ = "train" if torch.is_grad_enabled() and a[0].training else "unet_eval"
        else:
            key_ = key
        if _IN_VALIDATION[0] and key_ in ("unet_eval", "vae_decode"):
            key_ = key_.replace("unet", "validation").replace("vae", "validation")
        _COUNTS[key_] += n
        return f(*a, **k)
    setattr(cls, name, g)
_wrap(diffusers.UNet2DConditionModel, "forward", "unet")
_wrap(diffusers.AutoencoderKL, "decode", "vae_decode")
_wrap(diffusers.AutoencoderKL, "encode", "vae_encode")
_f = diffusers.StableDiffusionPipeline.from_pretrained.__func__
diffusers.StableDiffusionPipeline.from_pretrained = classmethod(
    lambda cls, *a, **k: (_COUNTS.__setitem__("load", _COUNTS["load"] + 1), _f(cls, *a, **k))[1])
_sample = _validation.Validator.sample
def _validation_sample(self):
    _IN_VALIDATION[0] = True
    try:
        return _sample(self)
    finally:
        _IN_VALIDATION[0] = False
_validation.Validator.sample = _validation_sample
'''
DUMP = "json.dump(_COUNTS, open(os.environ['DBTUTOR_COUNTS'], 'w'))"


def count(notebook: Path, env: dict, out: Path) -> dict:
    """Run one notebook, in a kernel of its own, with the counter cell first and the dump cell last; its counts."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(COUNTER))
    nb.cells.append(nbformat.v4.new_code_cell(DUMP))
    os.environ.update({**env, "DBTUTOR_COUNTS": str(out)})
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return json.loads(out.read_text())


def price(counts: dict, lora: bool, speed: str) -> dict:
    """Seconds on a T4 for one notebook (one runtime) at one speed: each kind of work at its price."""
    p = {k: v * SPEEDS["benchmark"] / SPEEDS[speed] for k, (v, _) in PRICES.items()}
    parts = {"sampling": counts["unet_eval"] * p["unet_eval"] + counts["vae_decode"] * p["vae_decode"],
             "validation": counts["validation_eval"] * p["unet_eval"] + counts["validation_decode"] * p["vae_decode"],
             "training": counts["train"] * p["train_lora" if lora else "train_full"],
             "cache": counts["vae_encode"] * p["vae_encode"],
             "loading": counts["load"] * p["load"] + (p["fetch"] if counts["load"] else 0),
             "runtime": p["install"] + p["drive"]}
    return {**parts, "total": sum(parts.values())}


def measure_load(folder: Path) -> float:
    """Seconds for dbtutor.load_pipeline(folder) in this process after a first load (imports and disk cache warm),
    on one thread: the load price's measurement."""
    import torch
    torch.set_num_threads(1)
    from dbtutor.models.pipeline import load_pipeline
    del_me = load_pipeline(folder)                 # imports, and the files into the page cache
    del del_me
    t0 = time.perf_counter()
    load_pipeline(folder)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "course_time")
    ap.add_argument("--measure-load", type=Path, metavar="FOLDER",
                    help="only measure the load price on this pipeline folder (bench/sd15_random.py makes one)")
    args = ap.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    import sys
    sys.path.insert(0, str(ROOT))                  # the dbtutor of this tree, in this process and the kernels
    if args.measure_load:
        print(f"load_pipeline({args.measure_load}): {measure_load(args.measure_load):.1f} s")
        return
    from dbtutor.course import settings
    from dbtutor.core.provenance import provenance
    from dbtutor.models.sd15 import save_random_pipeline
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="course_time-"))
    save_random_pipeline(tmp / "small-sd15", dtype="fp32", size="small")
    env = {"DBTUTOR_PROFILE": "sd15", "DBTUTOR_ALLOW_CPU": "1", "DBTUTOR_PRETRAINED": str(tmp / "small-sd15"),
           "DBTUTOR_NB_WORK": str(tmp / "work"), "DBTUTOR_NB_RESOLUTION": "64"}
    c = settings("sd15")
    lora = c.lora_rank > 0
    rows, t0 = [], time.time()
    for nb in NOTEBOOKS:
        counts = count(nb, env, args.out / f"{nb.stem}.json")
        rows.append({"notebook": nb.stem, "counts": counts,
                     "seconds": {speed: price(counts, lora, speed) for speed in SPEEDS}})
        print(f"{nb.stem:40s} " + "  ".join(f"{s} {rows[-1]['seconds'][s]['total'] / 60:5.1f} min" for s in SPEEDS)
              + f"  {counts}", flush=True)
    totals = {speed: sum(r["seconds"][speed]["total"] for r in rows) / 60 for speed in SPEEDS}
    training = sum(r["seconds"]["benchmark"]["training"] for r in rows)
    validation = sum(r["seconds"]["benchmark"]["validation"] for r in rows)
    result = {"kind": "course_time", "profile": "sd15", "speeds": SPEEDS,
              "settings": {k: str(v) for k, v in c.settings.items()},
              "prices": {k: {"seconds": v, "basis": b} for k, (v, b) in PRICES.items()},
              "notebooks": rows, "total_minutes": totals, "validation_share_of_training": validation / training,
              "counted_in_seconds": time.time() - t0, "provenance": provenance()}
    (args.out / "course_time.json").write_text(json.dumps(result, indent=1))
    print(f"the whole course on a T4 (estimated): {totals['conservative']:.0f} min at {SPEEDS['conservative']:g} it/s, "
          f"{totals['benchmark']:.0f} min at {SPEEDS['benchmark']:g} it/s; samples along the way "
          f"{validation / training:.0%} of training; {args.out / 'course_time.json'}")


if __name__ == "__main__":
    main()
