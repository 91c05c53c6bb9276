"""Architectures of the embedded base model: a tiny Stable Diffusion (VAE, CLIP text encoder, UNet, scheduler)."""
from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

MAX_TOKENS = 32          # captions are short; SD uses 77
TEXT_DIM = 128


def make_vae() -> AutoencoderKL:
    """64x64x3 <-> 16x16x4 (4x downsampling, as SD's 8x at 512 px gives 64x64x4)."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    )


def make_text_encoder(vocab_size: int = 49408) -> CLIPTextModel:
    """A 3-layer CLIP text transformer over the real CLIP vocabulary."""
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=TEXT_DIM)
    return CLIPTextModel(cfg)


def make_unet() -> UNet2DConditionModel:
    """A small SD-style UNet on 16x16x4 latents with cross-attention to the text encoder."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=32,
    )


SCHEDULER_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", steps_offset=1, clip_sample=False)


def make_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_KW)


def make_pipeline_scheduler() -> PNDMScheduler:
    """The scheduler saved with the pipeline, as in SD v1.5 (PNDM, 50 steps by default)."""
    return PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **{k: v for k, v in SCHEDULER_KW.items()
                                                                        if k not in ("clip_sample",)})
