"""Export a run as one file for the web UIs: a checkpoint in Stable Diffusion's original layout, or a kohya LoRA.

AUTOMATIC1111's web UI and ComfyUI read one .safetensors file in the key layout of the original Stable Diffusion
code (CompVis' ldm): model.diffusion_model.* (the UNet), first_stage_model.* (the VAE) and cond_stage_model.*
(the text encoder: OpenAI CLIP under transformer.text_model. for SD 1.x, OpenCLIP under model. for SD 2.x). The
names follow from the block structure, so each diffusers key is mapped by rule below (the same mapping as
diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py) and a key no rule maps is refused.

A LoRA run is exported in kohya's layout, which the web UIs and diffusers' load_lora_weights read:
lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha with the module's diffusers path, dots as
underscores (lora_te_text_model_... for the text encoder), by diffusers' convert_state_dict_to_kohya and the little
it lacks for SD 1.x/2.x. Our adapters have alpha / r folded into B, so each module's alpha is its rank (scale 1).

Only Stable Diffusion 1.x/2.x's block structure maps (four UNet levels of two layers, cross-attention in the first
three; a VAE of four levels): the web UIs recognise nothing else. Widths are free, so a narrow copy of the layout
(dbtutor.models.sd15, size 'small') exports and round-trips like the real model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..core.errors import ConfigError, DataError

SD_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
SD_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
LEVELS, LAYERS = 4, 2                                 # SD's UNet and VAE: four levels of two layers (+1 going up)
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
            "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}     # the last four: older diffusers
OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "self_attn.out_proj": "attn.out_proj"}
CLIP_KEY = re.compile(r"text_model\.(embeddings\.(token|position)_embedding\.weight|final_layer_norm\.(weight|bias)|"
                      r"encoder\.layers\.\d+\.(self_attn\.[qkv]_proj|self_attn\.out_proj|layer_norm[12]|mlp\.fc[12])"
                      r"\.(weight|bias))")
USE_FOLDER = "use the diffusers folder directly, e.g. StableDiffusionPipeline.from_pretrained('{run}')"


class NotStableDiffusion(ConfigError):
    """The run's architecture has no Stable Diffusion original layout."""


def _refuse(run, why: str):
    raise NotStableDiffusion(f"{run} is not Stable Diffusion 1.x/2.x's architecture ({why}): "
                             + USE_FOLDER.format(run=run))


# ----------------------------------------------------------------------------- architecture

def check_architecture(run, unet: dict, vae: dict, text_encoder: dict) -> str:
    """Refuse (one line) configs whose block structure has no SD original layout; return 'v1' (OpenAI CLIP text
    encoder) or 'v2' (OpenCLIP's, GELU)."""
    got = (f"levels x layers: UNet {len(unet.get('down_block_types', []))} x {unet.get('layers_per_block')}, VAE "
           f"{len(vae.get('down_block_types', []))} x {vae.get('layers_per_block')}; SD's are {LEVELS} x {LAYERS}")
    if list(unet.get("down_block_types", [])) != SD_DOWN or list(unet.get("up_block_types", [])) != SD_UP \
            or unet.get("layers_per_block") != LAYERS or len(vae.get("down_block_types", [])) != LEVELS \
            or vae.get("layers_per_block") != LAYERS:
        _refuse(run, got)
    odd = {key: unet.get(key) for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim")
           if unet.get(key) is not None}
    if unet.get("mid_block_type") not in (None, "UNetMidBlock2DCrossAttn"):
        odd["mid_block_type"] = unet["mid_block_type"]
    if unet.get("transformer_layers_per_block", 1) not in (1, [1] * LEVELS):
        odd["transformer_layers_per_block"] = unet["transformer_layers_per_block"]
    if unet.get("time_embedding_type", "positional") != "positional":
        odd["time_embedding_type"] = unet["time_embedding_type"]
    if odd:
        key = next(iter(odd))
        _refuse(run, f"its UNet has {key}={odd[key]!r}")
    if text_encoder.get("model_type") != "clip_text_model" or text_encoder.get("hidden_act") not in ("quick_gelu", "gelu"):
        _refuse(run, f"its text encoder is {text_encoder.get('model_type')} with {text_encoder.get('hidden_act')}, "
                     "not CLIP's text tower")
    return "v1" if text_encoder["hidden_act"] == "quick_gelu" else "v2"


def _config(folder: Path, part: str) -> dict:
    try:
        return json.loads((folder / part / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{folder / part / 'config.json'} cannot be read ({type(e).__name__}): export needs the "
                        "run's diffusers folder as `dbtutor train` saved it") from None


# ----------------------------------------------------------------------------- UNet, VAE, text encoder keys

def unet_key(k: str) -> str | None:
    """A diffusers UNet2DConditionModel key -> its name in SD's original UNet (None: no rule maps it)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if m := re.fullmatch(r"(.+)\.(weight|bias)", k):
        if m[1] in fixed:
            return f"{fixed[m[1]]}.{m[2]}"
    step = LAYERS + 1
    if m := re.fullmatch(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{step * i + j + 1}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(weight|bias)", k):
        return f"input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", k):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{step * i + j}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.conv\.(weight|bias)", k):
        i = int(m[1])
        return f"output_blocks.{step * i + LAYERS}.{1 if i == 0 else 2}.conv.{m[2]}"   # up_blocks.0 has no attention
    return None


def _resnet(rest: str) -> str:
    name, _, tail = rest.rpartition(".")
    return f"{RESNET.get(name, name)}.{tail}"


def vae_key(k: str) -> str | None:
    """A diffusers AutoencoderKL key -> its name in SD's original VAE (None: no rule maps it)."""
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)|(quant_conv|post_quant_conv)\.(weight|bias)", k):
        return k
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", k):
        return f"{m[1]}.norm_out.{m[2]}"
    resnet = r"\.resnets\.(\d)\.(norm1|conv1|norm2|conv2|conv_shortcut)\.(weight|bias)"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)" + resnet, k):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}.{m[4]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.downsamplers\.0\.conv\.(weight|bias)", k):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d)" + resnet, k):
        return f"decoder.up.{LEVELS - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}.{m[4]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.conv\.(weight|bias)", k):
        return f"decoder.up.{LEVELS - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(norm1|conv1|norm2|conv2)\.(weight|bias)", k):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}.{m[4]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", k):
        return f"{m[1]}.mid.attn_1.{VAE_ATTN[m[2]]}.{m[3]}" if m[2] in VAE_ATTN else None
    return None


def _convert(run, part: str, state: dict, rule) -> dict:
    out = {}
    for k, v in state.items():
        name = rule(k)
        if name is None:
            _refuse(run, f"its {part} weight {k} has no place in SD's layout")
        if name in out:
            _refuse(run, f"two {part} weights map to {name}")
        out[name] = v
    return out


def convert_unet(run, state: dict) -> dict:
    return {f"model.diffusion_model.{k}": v for k, v in _convert(run, "UNet", state, unet_key).items()}


def convert_vae(run, state: dict) -> dict:
    out = {}
    for k, v in _convert(run, "VAE", state, vae_key).items():
        if ".mid.attn_1." in k and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)             # SD's VAE attention uses 1x1 convolutions
        out[f"first_stage_model.{k}"] = v
    return out


def convert_text_encoder(run, state: dict, version: str) -> dict:
    """CLIP's keys (with or without transformers 4's text_model. prefix) -> SD 1.x's cond_stage_model.transformer.*
    or, for SD 2.x, OpenCLIP's cond_stage_model.model.* (q, k, v joined into in_proj)."""
    state = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()
             if not k.endswith("position_ids")}
    if version == "v1":                               # the same names under cond_stage_model.transformer.
        for k in state:
            if not CLIP_KEY.fullmatch(k):
                _refuse(run, f"its text-encoder weight {k} has no place in CLIP's layout")
        return {f"cond_stage_model.transformer.{k}": v for k, v in state.items()}
    out, qkv = {}, {}
    for k, v in state.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif m := re.fullmatch(r"text_model\.final_layer_norm\.(weight|bias)", k):
            out[f"ln_final.{m[1]}"] = v
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k):
            if m[2] not in OPENCLIP:
                _refuse(run, f"its text-encoder weight {k} has no place in OpenCLIP's layout")
            out[f"transformer.resblocks.{m[1]}.{OPENCLIP[m[2]]}.{m[3]}"] = v
        else:
            _refuse(run, f"its text-encoder weight {k} has no place in OpenCLIP's layout")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise DataError(f"{run}: text encoder layer {layer} lacks one of q, k, v: the file is damaged")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {f"cond_stage_model.model.{k}": v for k, v in out.items()}


# ----------------------------------------------------------------------------- whole runs

def _weights(folder: Path, part: str) -> dict:
    from safetensors.torch import load_file
    files = sorted((folder / part).glob("*.safetensors"))
    files = [f for f in files if ".fp16." not in f.name] or files
    if len(files) != 1:
        raise DataError(f"{folder / part}: expected one .safetensors file, found {len(files)}: export reads the run "
                        "as `dbtutor train` saved it (safetensors, not sharded)")
    return load_file(str(files[0]))


def checkpoint_state(run, half: bool = False) -> dict:
    """The run's UNet, VAE and text encoder as one state dict in SD's original layout (fp16 with `half`)."""
    run = Path(run)
    version = check_architecture(run, _config(run, "unet"), _config(run, "vae"), _config(run, "text_encoder"))
    state = {**convert_unet(run, _weights(run, "unet")), **convert_vae(run, _weights(run, "vae")),
             **convert_text_encoder(run, _weights(run, "text_encoder"), version)}
    dtype = torch.float16 if half else torch.float32
    return {k: v.to(dtype).contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------- LoRA in kohya's layout

SD_ATTENTIONS = {f"down_blocks.{i}.attentions.{j}" for i in range(LEVELS - 1) for j in range(LAYERS)} \
    | {f"up_blocks.{i}.attentions.{j}" for i in range(1, LEVELS) for j in range(LAYERS + 1)} | {"mid_block.attentions.0"}
PEFT_KEY = re.compile(r"(unet|text_encoder)\.(.+)\.lora_([AB])\.weight")
TE_SDXL, TE_SD = "lora_te1_", "lora_te_"      # kohya's names of SDXL's first text encoder, and of SD 1.x/2.x's one


def kohya_state(run, adapters: dict) -> dict:
    """pytorch_lora_weights.safetensors (as save_lora writes it: alpha / r folded into B) -> kohya's layout, through
    diffusers' own conversions (to PEFT's names, then convert_state_dict_to_kohya, which sets each module's alpha to
    its rank: scale 1, right for folded weights). What they lack, done here: the checks (adapters dbtutor writes,
    on SD's attention blocks, both halves of each), the text encoder's SD 1.x/2.x name (they write SDXL's
    lora_te1_), and alpha as a float, as kohya's files store it (they write an integer)."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
    adapters = {re.sub(r"^text_encoder\.(?!text_model\.)", "text_encoder.text_model.", k): v for k, v in adapters.items()}
    try:
        peft = convert_all_state_dict_to_peft(convert_unet_state_dict_to_peft(adapters))
    except ValueError:
        peft = adapters
    halves: dict[str, set] = {}
    for k in peft:
        if not (m := PEFT_KEY.fullmatch(k)):
            raise DataError(f"{run}: adapter weight {k} is not one dbtutor writes; export reads "
                            "pytorch_lora_weights.safetensors as `dbtutor train` saved it")
        halves.setdefault(f"{m[1]}.{m[2]}", set()).add(m[3])
    blocks = {m[1] for name in halves if (m := re.match(r"unet\.(down_blocks\.\d+\.attentions\.\d+|mid_block\."
                                                            r"attentions\.0|up_blocks\.\d+\.attentions\.\d+)\.", name))}
    if blocks and blocks != SD_ATTENTIONS:
        _refuse(run, f"its UNet adapters sit in {len(blocks)} attention blocks, SD's UNet has {len(SD_ATTENTIONS)}")
    for module, pair in sorted(halves.items()):
        if pair != {"A", "B"}:
            raise DataError(f"{run}: adapter {module} lacks its {'up' if 'A' in pair else 'down'} half: the file "
                            "is damaged; rerun `dbtutor train` (it continues from the last checkpoint)")
    out = {}
    for k, v in convert_state_dict_to_kohya(peft).items():
        k = TE_SD + k[len(TE_SDXL):] if k.startswith(TE_SDXL) else k
        out[k] = v.float() if k.endswith(".alpha") else v.contiguous()
    return out


# ----------------------------------------------------------------------------- the command

def run_kind(run) -> str:
    """'lora' (the run holds pytorch_lora_weights.safetensors) or 'full' (a whole pipeline); DataError otherwise."""
    from ..models.lora import WEIGHT_NAME
    run = Path(run)
    if (run / WEIGHT_NAME).exists():
        return "lora"
    if (run / "model_index.json").exists():
        return "full"
    raise DataError(f"{run} holds neither a trained pipeline (model_index.json) nor LoRA adapters ({WEIGHT_NAME}): "
                    "give the output_dir of a finished `dbtutor train`")


def export(run, out, half: bool = False, merged: bool = False) -> dict:
    """Write `run` as one .safetensors file at `out` (atomically): a full run (or with `merged`, a LoRA run's merged
    pipeline) as an SD checkpoint, a LoRA run as a kohya LoRA. Returns {'kind', 'tensors', 'bytes', 'path'}."""
    from safetensors.torch import load_file, save_file
    from ..core.fileio import atomic_path
    from ..models.lora import WEIGHT_NAME
    run, out = Path(run), Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the web UIs read .safetensors files; name it e.g. {out.with_suffix('.safetensors').name}")
    kind = run_kind(run)
    if merged and kind == "lora" and not (run / "model_index.json").exists():
        raise DataError(f"{run} holds the adapters only, no merged pipeline: export without --merged (a LoRA file "
                        "for the base model)")
    if kind == "full" or merged:
        state, meta = checkpoint_state(run, half), {"format": "pt"}
        kind = "checkpoint"
    else:
        state = kohya_state(run, load_file(str(run / WEIGHT_NAME)))
        state = {k: v.half() if half and v.ndim else v for k, v in state.items()}
        meta = {"format": "pt", "ss_network_module": "networks.lora"}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return {"kind": kind, "tensors": len(state), "bytes": out.stat().st_size, "path": out}
