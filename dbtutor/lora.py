"""LoRA DreamBooth with peft: adapters on the UNet's (and text encoder's) attention projections."""
from __future__ import annotations

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_lora(cfg, unet, text_encoder):
    """model.lora.rank > 0: freeze the base weights and add trainable LoRA adapters (peft)."""
    r = cfg.model.lora.rank
    if not r:
        return
    from peft import LoraConfig
    alpha = cfg.model.lora.alpha or r
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    if cfg.model.train_text_encoder:
        text_encoder.requires_grad_(False)
        text_encoder.add_adapter(LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian",
                                            target_modules=TEXT_TARGETS))


def trainable_parameters(cfg, unet, text_encoder) -> list:
    mods = [unet] + ([text_encoder] if cfg.model.train_text_encoder else [])
    return [p for m in mods for p in m.parameters() if p.requires_grad]


def save_lora(pipe, cfg, folder):
    """Write pytorch_lora_weights.safetensors, which stock diffusers loads with pipe.load_lora_weights(folder)."""
    if not cfg.model.lora.rank:
        return
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    te_layers = None
    if cfg.model.train_text_encoder:
        te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                              safe_serialization=True)
