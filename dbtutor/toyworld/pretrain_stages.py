"""The stages of the base model's pretraining: the VAE, its latents of the rendered world, and text encoder + UNet
(also the names stage, which continues them with named captions)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..core.fileio import atomic_path
from . import judge as J
from .models import make_noise_scheduler, make_text_encoder, make_unet, make_vae
from .names import named_caption, names_by_look, names_without_meaning, world_names
from .training import ema_init, load_ema, load_set, train_loop
from .world import caption


def stage_vae(work, seed, steps, steps_full):
    vae = make_vae()
    x, _ = load_set(work / "world")

    def step_fn(g, step):
        step_full = bool(torch.rand(1, generator=g) < steps_full / steps)
        idx = torch.randint(len(x), (32,), generator=g)
        xb = J.to_tensor(x[idx.numpy()])
        if not step_full:        # most steps on random 32x32 crops: 4x cheaper, the VAE is convolutional
            i, j = torch.randint(0, 33, (2,), generator=g).tolist()
            xb = xb[:, :, i:i + 32, j:j + 32]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse, l1 = F.mse_loss(rec, xb), F.l1_loss(rec, xb)
        kl = post.kl().mean() / z[0].numel()
        return {"loss": mse + l1 + 1e-4 * kl, "mse": mse.detach(), "kl": kl.detach()}

    train_loop("vae", work, steps, seed, list(vae.parameters()), {"vae": vae}, step_fn, lr=1e-3)
    return vae


@torch.no_grad()
def stage_latents(work, vae):
    path = work / "latents.safetensors"
    if path.exists():
        return load_file(str(path))
    x, _ = load_set(work / "world")
    vae.eval()
    means, logvars = [], []
    for i in tqdm(range(0, len(x), 256), desc="encode latents"):
        post = vae.encode(J.to_tensor(x[i:i + 256])).latent_dist
        means.append(post.mean)
        logvars.append(post.logvar)
    lat = {"mean": torch.cat(means).contiguous(), "logvar": torch.cat(logvars).contiguous()}
    sample = lat["mean"][:4096] + (0.5 * lat["logvar"][:4096]).exp() * torch.randn_like(lat["mean"][:4096])
    lat["scaling_factor"] = torch.tensor(1.0 / float(sample.std()))
    with atomic_path(path) as tmp:
        save_file(lat, str(tmp))
    return lat


def min_snr_weight(noise_sched, t, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR.

    Down-weights the easy low-noise steps so that the high-noise steps, where the caption decides the layout
    (which scene, which object), get more of the gradient. gamma=0 turns it off (all weights 1)."""
    if not gamma:
        return torch.ones(len(t))
    snr = noise_sched.alphas_cumprod[t] / (1 - noise_sched.alphas_cumprod[t])
    return snr.clamp(max=gamma) / snr


def stage_unet(work, seed, steps, lat, tokenizer, snr_gamma=0.0, noise_offset=0.0, snr_gamma_steps=None, lr=6e-4,
               stage="unet", start=None, p_name=0.0, warmup=200, names_meaning="fixed"):
    """Text encoder + UNet on the world's latents. stage="names" continues `start` (te, unet) with captions that
    call objects by their names with probability p_name (see names.py); names_meaning="random": by any name."""
    _, attrs = load_set(work / "world")
    te, unet = start if start is not None else (make_text_encoder(), make_unet())
    modules = {"text_encoder": te, "unet": unet}
    by_look = names_by_look(world_names(tokenizer)) if p_name else None
    if by_look and names_meaning == "random":
        by_look = names_without_meaning(by_look)
    noise_sched = make_noise_scheduler()
    scale = float(lat["scaling_factor"])
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids

    def step_fn(g, step):
        idx = torch.randint(len(attrs), (32,), generator=g)
        rng = np.random.default_rng(int(torch.randint(2 ** 31, (1,), generator=g)))
        caps = [named_caption(attrs[i], rng, by_look, p_name) if p_name else caption(attrs[i], rng)
                for i in idx.tolist()]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        drop = torch.rand(32, generator=g) < 0.1                      # classifier-free guidance dropout
        ids[drop] = empty
        mean, logvar = lat["mean"][idx], lat["logvar"][idx]
        z = (mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)) * scale
        noise = torch.randn(z.shape, generator=g)
        # offset noise: a random shift of each latent channel's mean. The scaled-linear schedule never fully
        # hides the image's mean colour (SNR(T) = 0.005), so without it the model reads the background from
        # that leak instead of from the caption, and at sampling time the seed, not "on the snow", picks it.
        if noise_offset:                                      # (no random draw at all when it is off)
            noise = noise + noise_offset * torch.randn(z.shape[:2] + (1, 1), generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (32,), generator=g)
        pred = unet(noise_sched.add_noise(z, noise, t), t, te(ids)[0]).sample
        # Min-SNR for the first snr_gamma_steps steps (the layout: which scene, which object), then plain MSE,
        # which gives the low-noise steps (the shapes' edges) their full weight back
        gamma = snr_gamma if snr_gamma_steps is None or step < snr_gamma_steps else 0.0
        if not gamma:
            return {"loss": F.mse_loss(pred, noise)}
        mse = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (mse * min_snr_weight(noise_sched, t, gamma)).mean()
        return {"loss": loss, "mse": mse.mean().detach()}

    ema = train_loop(stage, work, steps, seed, [p for m in modules.values() for p in m.parameters()], modules,
                     step_fn, lr=lr, ema=ema_init(modules), warmup=warmup)
    load_ema(modules, ema)
    return te, unet
