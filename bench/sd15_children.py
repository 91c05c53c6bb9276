"""What bench/sd15_bench.py runs in its children, each a fresh process: the config, the memory watchdog, the
stages child (load, class images, VAE and text encoding) and the memory child (a few steps of train())."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import torch

from rss import gib, mem_available_gib, peak_rss_mb, rss_mb
from timing import med

ROOT = Path(__file__).resolve().parent.parent


def make_config(args, **overrides):
    """The GPU command of docs/gpu.md (dog6, 512 px, prior preservation), with CPU-affordable sizes, under --work."""
    from dbtutor import load_config
    w = Path(args.work)
    base = {"model.pretrained": str(args.model), "output_dir": str(w / "run"),
            "model.data.instance_dir": str(ROOT / "data" / "dog6"), "model.data.instance_prompt": "a photo of sks dog",
            "model.data.regularization_dir": str(w / "class_images"),
            "model.data.regularization_prompt": "a photo of a dog", "model.data.resolution": args.resolution,
            "model.data.num_reg_images": args.n_class, "model.data.num_images_per_prompt": 4,
            "model.data.cached_instance_dir": str(w / "cache" / "instance"),
            "model.data.cached_reg_dir": str(w / "cache" / "class"), "model.train_text_encoder": False,
            "model.sampling.scheduler": "pndm", "model.sampling.num_inference_steps": args.sampler_steps,
            "model.sampling.guidance_scale": 7.5, "trainer.batch_size": 1, "optim.lr": 5e-6,
            "trainer.precision": 32, "trainer.device": "cpu", "trainer.checkpoint_every": 0,
            "trainer.resume": False, "trainer.progress": False}
    base.update(overrides)
    return load_config(overrides=base)


def watchdog(floor_gib: float):
    """Stop this process (exit 3, one JSON line) if the machine's available memory falls under floor_gib."""
    def run():
        while True:
            avail = mem_available_gib()
            if avail < floor_gib:
                print(json.dumps({"aborted": True, "rss_gib": gib(rss_mb()), "peak_gib": gib(peak_rss_mb()),
                                  "available_gib": avail}), flush=True)
                os._exit(3)
            time.sleep(0.05)
    threading.Thread(target=run, daemon=True).start()


def capture_training_objects():
    """train() builds its pipeline and optimizer inside; keep references to them (for contenders that share them)."""
    import importlib
    T = importlib.import_module("dbtutor.train")      # the module: dbtutor.train is also the function's name
    got = {}
    load, make_opt = T.load_pipeline, T.make_optimizer

    def load_pipeline(*a, **k):
        got["pipe"] = load(*a, **k)
        got["load_rss_gib"], got["load_peak_gib"] = gib(rss_mb()), gib(peak_rss_mb())
        return got["pipe"]

    def make_optimizer(cfg, params, device):
        got["params"], got["opt"] = params, make_opt(cfg, params, device)
        return got["opt"]
    T.load_pipeline, T.make_optimizer = load_pipeline, make_optimizer
    C = importlib.import_module("dbtutor.runs.checkpoint")   # run_checkpoints saves through it at the end of train()
    C.save_pipeline = lambda *a, **k: None   # the final save is the end-to-end run's, not measured here
    return got


def child_stages(args) -> dict:
    """Load; class images (every UNet call and VAE decode timed); VAE encoding of the latent cache; text encoding."""
    from dbtutor.core.config import cached_dirs
    from dbtutor.data import scan_images
    from dbtutor.latent_cache import cache_latents
    from dbtutor.models.pipeline import load_pipeline
    from dbtutor.regularization import generate_regularization
    cfg = make_config(args)
    d = cfg.model.data
    a = time.perf_counter()
    pipe = load_pipeline(cfg.model.pretrained)
    r = {"load_s": time.perf_counter() - a, "load_rss_gib": gib(rss_mb()), "load_peak_gib": gib(peak_rss_mb())}
    calls, decodes = [], []

    def pre(module, inputs):
        module._t0 = time.perf_counter()

    def post(module, inputs, output):
        calls.append((time.perf_counter() - module._t0, int(inputs[0].shape[0])))
    pipe.unet.register_forward_pre_hook(pre)
    pipe.unet.register_forward_hook(post)
    decode = pipe.vae.decode

    def timed_decode(z, *a, **k):
        t = time.perf_counter()
        out = decode(z, *a, **k)
        decodes.append((time.perf_counter() - t, int(z.shape[0])))
        return out
    pipe.vae.decode = timed_decode
    shutil.rmtree(d.regularization_dir, ignore_errors=True)
    a = time.perf_counter()
    generate_regularization(cfg, pipe, progress=False)
    r["class_images_s"], r["class_images"] = time.perf_counter() - a, d.num_reg_images
    r["unet_calls"] = len(calls)
    r["step_per_image_s"] = med([t / (b // 2) for t, b in calls[1:] or calls])      # batch = 2 x images (guidance)
    r["decode_per_image_s"] = med([t / b for t, b in decodes])
    inst, reg = cached_dirs(cfg)
    for name, folder, cache in (("instance", d.instance_dir, inst), ("class", d.regularization_dir, reg)):
        shutil.rmtree(cache, ignore_errors=True)
        paths = scan_images(folder)
        a = time.perf_counter()
        cache_latents(paths, cache, pipe.vae, d.resolution, d.center_crop)
        r[f"encode_{name}_per_image_s"] = (time.perf_counter() - a) / len(paths)
    ids = pipe.tokenizer([d.instance_prompt, d.regularization_prompt], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    times = []
    for _ in range(3):
        a = time.perf_counter()
        with torch.no_grad():
            pipe.text_encoder(ids)
        times.append(time.perf_counter() - a)
    r["text_encode_s"] = med(times)
    r["peak_gib"] = gib(peak_rss_mb())
    return r


def child_memory(args) -> dict:
    """train() for --child-steps steps of one configuration; its peak RSS and the time of its last step."""
    from dbtutor.train import train
    got = capture_training_objects()
    cfg = make_config(args, **{"model.gradient_checkpointing": bool(args.gc), "model.lora.rank": args.lora,
                               "model.train_text_encoder": bool(args.te), "trainer.max_steps": args.child_steps,
                               "optim.lr": 1e-4 if args.lora else 5e-6,
                               "output_dir": str(Path(args.work) / f"mem_{args.lora}_{args.gc}_{args.te}")})
    stamps = []
    res = train(cfg, progress=False, callback=lambda rec: stamps.append(time.perf_counter()))
    shutil.rmtree(res.output_dir, ignore_errors=True)
    trainable = sum(p.numel() for p in got["params"])
    return {"peak_gib": gib(peak_rss_mb()), "load_rss_gib": got["load_rss_gib"], "load_peak_gib": got["load_peak_gib"],
            "step_s": stamps[-1] - stamps[-2] if len(stamps) > 1 else float("nan"), "trainable": trainable}
