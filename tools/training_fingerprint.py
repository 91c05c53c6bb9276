"""Train a tiny random pipeline for 6 steps in 14 modes and record each mode's losses and saved weights' hashes.

    python tools/training_fingerprint.py OUT.json                  # this tree
    python tools/training_fingerprint.py --compare OLD.json NEW.json

A refactor that must not change training (moving modules, splitting the loop) runs it on the tree before and
after and compares: every loss of every step and every saved weight file (unet, text encoder, vae, LoRA adapters)
must be bit-identical. Latent-cache entries are not compared: their names hold the model folder's path.
"""
import hashlib
import json
import sys
import tempfile
from pathlib import Path

if sys.argv[1] == "--compare":
    a, b = (json.loads(Path(p).read_text()) for p in sys.argv[2:4])
    same = True
    for mode in a:
        wa, wb = ({f: h for f, h in x[mode]["weights"].items() if not f.startswith("latents/")} for x in (a, b))
        ok = a[mode]["history"] == b[mode]["history"] and wa == wb
        same &= ok
        print(f"{mode:20s} {'identical' if ok else 'DIFFERENT'}: {len(a[mode]['history'])} steps, {len(wa)} weight files")
    sys.exit(0 if same else 1)
tree = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(tree))
sys.path.insert(0, str(tree / "tests"))
import torch  # noqa: E402

torch.set_num_threads(1)
from conftest import SUBJECT, make_tiny_pipeline  # noqa: E402

import dbtutor  # noqa: E402

work = Path(tempfile.mkdtemp(prefix="training_fingerprint-"))
work.mkdir(parents=True, exist_ok=True)
base = work / "tiny"
pipe = make_tiny_pipeline()
pipe.save_pretrained(base, safe_serialization=True)
try:
    from dbtutor.models.pipeline import sd_layout
except ImportError:                                   # a tree from before the package's rooms
    from dbtutor.pipeline import sd_layout
sd_layout(base)

MODES = {
    "default": {},
    "noprior": {"model.with_prior_preservation": False},
    "lambda0.3": {"model.prior_loss_weight": 0.3},
    "lora": {"model.lora.rank": 4, "optim.lr": 1e-3},
    "lora_te": {"model.lora.rank": 4, "model.train_text_encoder": True},
    "lora_adapters_only": {"model.lora.rank": 4, "model.lora.save_merged": False},
    "text_encoder": {"model.train_text_encoder": True},
    "checkpointing": {"model.gradient_checkpointing": True},
    "cosine": {"optim.lr_scheduler": "cosine", "optim.warmup_steps": 2},
    "batch2": {"trainer.batch_size": 2},
    "validation": {"trainer.validation.every": 2},
    "no_cache": {"model.use_cached_latents": False},
    "eager": {"model.attention": "eager"},
}


def files_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*.safetensors")) if "checkpoints" not in p.parts}


out = {}
for name, over in MODES.items():
    cfg = dbtutor.load_config(overrides={
        "model.pretrained": str(base), "output_dir": str(work / "runs" / name),
        "model.data.instance_dir": str(SUBJECT), "model.data.regularization_dir": str(work / "reg"),
        "model.data.num_reg_images": 6, "model.data.num_images_per_prompt": 3, "model.data.resolution": 32,
        "model.sampling.num_inference_steps": 2, "trainer.max_steps": 6, "trainer.checkpoint_every": 3,
        "trainer.progress": False, "trainer.validation.every": 0, "model.sampling.card_seeds": 0, **over})
    res = dbtutor.train(cfg)
    out[name] = {"history": [{k: v for k, v in h.items()} for h in res.history],
                 "weights": files_hash(Path(cfg.output_dir))}
    print(name, res.history[-1]["loss"], flush=True)
# resume: 3 steps, then the same run to 6
cfg = lambda steps: dbtutor.load_config(overrides={  # noqa: E731
    "model.pretrained": str(base), "output_dir": str(work / "runs" / "resumed"),
    "model.data.instance_dir": str(SUBJECT), "model.data.regularization_dir": str(work / "reg"),
    "model.data.num_reg_images": 6, "model.data.num_images_per_prompt": 3, "model.data.resolution": 32,
    "model.sampling.num_inference_steps": 2, "trainer.max_steps": steps, "trainer.checkpoint_every": 3,
    "trainer.progress": False, "trainer.validation.every": 0, "model.sampling.card_seeds": 0,
    "trainer.keep_checkpoints": True})
dbtutor.train(cfg(3))
res = dbtutor.train(cfg(6))
out["resumed"] = {"history": res.history, "weights": files_hash(work / "runs" / "resumed")}
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True))
