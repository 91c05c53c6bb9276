"""The DreamBooth training loop written by hand on the package's pieces (notebook 05's cell) gives the loss that
dbtutor.train records at every step."""
import pytest
import torch
from diffusers import DDPMScheduler

import dbtutor
from dbtutor.train import step_generator

STEPS = 30


@pytest.mark.slow
def test_the_loop_by_hand_gives_trains_loss_at_every_step(tiny_config):
    cfg = tiny_config(**{"trainer.max_steps": STEPS, "trainer.checkpoint_every": 0, "trainer.validation.every": 0})
    reference = dbtutor.train(cfg)                  # also generates the class images and caches the latents

    # ---- the loop by hand ----------------------------------------------------------------------------------------
    pipe = dbtutor.load_pipeline(cfg.model.pretrained)
    unet, vae = pipe.unet, pipe.vae
    latents = dbtutor.cache_subject_latents(cfg, pipe)     # each image's latent distribution: mean and log-variance
    ids = pipe.tokenizer([cfg.model.data.instance_prompt, cfg.model.data.regularization_prompt],
                         padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = pipe.text_encoder(ids)[0]          # the text encoder is frozen: embed the two prompts once
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    T = noise_scheduler.config.num_train_timesteps
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    B, shape = cfg.trainer.batch_size, latents["instance"]["mean"].shape[1:]
    unet.train()
    losses = []
    for step in range(STEPS):
        g = step_generator(cfg.trainer.seed, step)  # every random number of this step comes from (seed, step)
        z, noise, t = [], [], []
        for part in ("instance", "regularization"):     # B subject images, then B class images
            mean, logvar = latents[part]["mean"], latents[part]["logvar"]
            i = torch.randint(0, 2 ** 31 - 1, (B,), generator=g) % len(mean)    # which images
            vae_noise = torch.randn((B, *shape), generator=g)
            noise.append(torch.randn((B, *shape), generator=g))
            t.append(torch.randint(0, T, (B,), generator=g))
            z.append((mean[i] + (0.5 * logvar[i]).exp() * vae_noise) * vae.config.scaling_factor)    # a latent sample
        z, noise, t = torch.cat(z), torch.cat(noise), torch.cat(t)
        noisy = noise_scheduler.add_noise(z, noise, t)                  # forward diffusion to timestep t
        pred = unet(noisy, t, embeds[[0] * B + [1] * B]).sample          # predict the noise, each with its prompt
        loss, instance_loss, prior_loss = dbtutor.dreambooth_loss(pred, noise, True, cfg.model.prior_loss_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.optim.max_grad_norm)
        for group in optimizer.param_groups:        # linear warmup, then constant
            group["lr"] = cfg.optim.lr * min(1.0, (step + 1) / cfg.optim.warmup_steps)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # ------------------------------------------------------------------------------------------------------------

    assert losses == pytest.approx([h["loss"] for h in reference.history], rel=1e-5)      # measured: 1e-7
