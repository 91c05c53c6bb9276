"""How much GPU memory a DreamBooth setting needs, and which setting fits a GPU: estimates, each part with its basis.

    python -m dbtutor.models.memory              # each setting's estimated peak, and what fits 12, 16 and 24 GB cards
    python -m dbtutor.models.memory --baseline   # re-measure PROCESS_GIB (a Python process with the libraries loaded)

Nothing here ran on a GPU. The parts that are arithmetic (weights, gradients, optimizer state, autocast's copies)
are counted from the parameter counts; the activations are what is left of peaks measured on a CPU with Stable
Diffusion v1.5's architecture at 512 px in float32 (MEASURED_PEAK_GIB) once those parts are taken out; float16
autocast's share of them, CUDA's context and the margin are estimates, named as such.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

from .sd15 import PUBLISHED_PARAMS

GIB = 2 ** 30
# Peak resident memory of dbtutor.train on a CPU: SD v1.5's architecture (random weights), 512 px, float32, batch 1
# instance + 1 class image, cached latents, AdamW; two steps in a fresh process each (`python bench/sd15_bench.py`,
# README "Using your own photos and Stable Diffusion v1.5 (GPU)"). Key: (LoRA rank, gradient checkpointing, text
# encoder trained). The last one is from that script's timing run (its callback also ran reference steps).
MEASURED_PEAK_GIB = {(8, False, False): 10.2, (0, True, False): 15.4, (0, False, False): 17.1, (0, False, True): 18.4}
# A Python process with torch, diffusers, transformers, accelerate and peft imported and the tokenizer loaded: in
# those peaks, not on a GPU (measured: python -m dbtutor.models.memory --baseline, 0.475 GiB)
PROCESS_GIB = 0.47
CUDA_CONTEXT_GIB = 0.75       # estimate: CUDA's context with cuBLAS and cuDNN loaded, 0.5-1 GB depending on the GPU
# estimate: autocast's saved activations relative to float32. Convolutions and linear layers save float16 outputs
# (0.5), but GroupNorm/LayerNorm run in float32 under autocast and their outputs feed every convolution (0.67 for a
# ResNet block): the conservative end
HALF_ACTIVATIONS = 0.65
MARGIN = 0.10                 # of the card: the caching allocator's fragmentation, cuDNN workspaces
# LoRA parameters per unit of rank on SD v1.5 (UNET_TARGETS / TEXT_TARGETS of dbtutor.models.lora: in + out features of
# each targeted Linear); tests/test_memory.py counts them on the model
LORA_PARAMS_PER_RANK = {"unet": 199_296, "text_encoder": 73_728}
# what torch.cuda reports as total memory on typical cards (GiB): an RTX 3060 12 GB, a T4 (16 GB with ECC on, as on
# Colab), an L4 (24 GB, the smallest of the common 24 GB cards)
CARDS = {12: 11.7, 16: 14.7, 24: 22.0}
PARTS = ("trained weights", "frozen weights", "gradients", "optimizer state", "autocast copies", "activations",
         "CUDA context")


@dataclass(frozen=True)
class Setting:
    lora_rank: int = 0                 # 0: full fine-tuning
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    train_text_encoder: bool = False
    precision: str = "16"              # "16" or "bf16" (the same memory), or "32"

    def label(self) -> str:
        what = f"LoRA r={self.lora_rank}" if self.lora_rank else "full fine-tuning"
        bits = [what, "checkpointing " + ("on" if self.gradient_checkpointing else "off"),
                "8-bit AdamW" if self.use_8bit_adam else "AdamW"]
        if self.train_text_encoder:
            bits.append("text encoder trained")
        return ", ".join(bits) + ("" if self.precision != "32" else ", fp32")


def trained_params(s: Setting, counts: dict = PUBLISHED_PARAMS) -> int:
    parts = ["unet"] + (["text_encoder"] if s.train_text_encoder else [])
    if s.lora_rank:
        return sum(LORA_PARAMS_PER_RANK[p] * s.lora_rank for p in parts)
    return sum(counts[p] for p in parts)


def _static(s: Setting, counts: dict) -> dict:
    """Bytes of everything but the activations: trained weights and their gradients in float32, AdamW's two moments
    (8 bytes per trained parameter, 2 in 8 bits), frozen weights in float32, or 16 bits where dbtutor casts them
    (a GPU with precision 16/bf16: precision.half_frozen), and with autocast a half copy of each trained weight,
    made in the forward pass and kept for the backward."""
    half = s.precision != "32"
    trained = trained_params(s, counts)
    base_trained = 0 if s.lora_rank else trained        # LoRA: every base weight is frozen
    frozen = sum(counts.values()) - base_trained
    return {"trained weights": 4 * trained, "frozen weights": (2 if half else 4) * frozen, "gradients": 4 * trained,
            "optimizer state": (2 if s.use_8bit_adam else 8) * trained, "autocast copies": 2 * trained if half else 0}


def activations_fp32(lora: bool, checkpointing: bool) -> tuple[float, str]:
    """GiB of activations (and whatever else the peak holds beyond the static parts) in float32, and its basis: a
    measured CPU peak minus the static parts and the process baseline. LoRA's rank and the text encoder's own
    activations (two prompts of 77 tokens) are lost in the noise: a measurement of the same kind (LoRA or full) and
    checkpointing stands for all of them, the larger where there are two."""
    found = []
    for key, peak in MEASURED_PEAK_GIB.items():
        if bool(key[0]) == lora and key[1] == checkpointing:
            s = Setting(key[0], key[1], False, key[2], "32")
            found.append((peak - sum(_static(s, PUBLISHED_PARAMS).values()) / GIB - PROCESS_GIB, key))
    if found:
        act, key = max(found)
        label = Setting(key[0], key[1], False, key[2], "32").label()
        return act, f"measured: {label}, {MEASURED_PEAK_GIB[key]} GiB peak"
    if lora:   # not measured with checkpointing: the value without it bounds it from above
        act, basis = activations_fp32(True, False)
        return act, "not measured, bounded by " + basis.removeprefix("measured: ")
    raise KeyError(f"no measurement for lora={lora}, checkpointing={checkpointing}")


def estimate(s: Setting, counts: dict = PUBLISHED_PARAMS) -> dict:
    """The parts of a setting's peak GPU memory in GiB at 512 px, batch 1 instance + 1 class image, and 'total';
    'basis' says where the activations come from. counts: parameters of unet, text_encoder and vae (SD v1.5's
    published ones by default; the activations are SD v1.5's whatever the counts)."""
    parts = {k: v / GIB for k, v in _static(s, counts).items()}
    act, basis = activations_fp32(bool(s.lora_rank), s.gradient_checkpointing)
    if s.precision != "32":
        act *= HALF_ACTIVATIONS
        basis += f", x{HALF_ACTIVATIONS} for autocast (estimate)"
    parts["activations"] = act
    parts["CUDA context"] = CUDA_CONTEXT_GIB
    return {**parts, "total": sum(parts.values()), "basis": basis}


def upper(s: Setting, counts: dict = PUBLISHED_PARAMS) -> float:
    """The estimate with the activations at their float32 size: what picking a setting allows for."""
    e = estimate(s, counts)
    return e["total"] - e["activations"] + activations_fp32(bool(s.lora_rank), s.gradient_checkpointing)[0]


def fits(s: Setting, total_gib: float, counts: dict = PUBLISHED_PARAMS) -> bool:
    """Whether a setting fits a card with margin: its estimate, with the activations at their float32 size, within
    (1 - MARGIN) of the card's memory."""
    return upper(s, counts) <= (1 - MARGIN) * total_gib


KINDS = ("any", "full", "lora")


def candidates(bnb: bool, precision: str = "16", train_text_encoder: bool = False, kind: str = "any") -> list[Setting]:
    """The settings gpu_settings tries, best first: full fine-tuning (the reference DreamBooth) before LoRA, no
    gradient checkpointing (faster) before checkpointing, AdamW before its 8-bit form (needs bitsandbytes).
    kind: "any", or only "full" fine-tuning, or only "lora"."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    te = train_text_encoder
    full = [Setting(0, False, False, te, precision), Setting(0, True, False, te, precision)]
    if bnb:
        full += [Setting(0, False, True, te, precision), Setting(0, True, True, te, precision)]
    lora = [Setting(16, False, False, te, precision), Setting(16, True, False, te, precision)]
    return {"any": full + lora, "full": full, "lora": lora}[kind]


def overrides(s: Setting) -> dict:
    """The config overrides of a setting. Learning rates as published for Stable Diffusion DreamBooth (diffusers'
    examples/dreambooth): full fine-tuning 5e-6, 2e-6 with the text encoder trained; LoRA 1e-4."""
    lr = 1e-4 if s.lora_rank else (2e-6 if s.train_text_encoder else 5e-6)
    return {"model.lora.rank": s.lora_rank, "model.gradient_checkpointing": s.gradient_checkpointing,
            "optim.use_8bit_adam": s.use_8bit_adam, "trainer.precision": s.precision, "optim.lr": lr}


def _gpu() -> tuple[float, tuple[int, int]] | None:
    import torch
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.total_memory / GIB, (props.major, props.minor)


def _has_bitsandbytes() -> bool:
    import importlib.util
    return importlib.util.find_spec("bitsandbytes") is not None


def gpu_settings(total_gib: float | None = None, bnb: bool | None = None, capability: tuple[int, int] | None = None,
                 train_text_encoder: bool = False, kind: str = "any") -> dict:
    """Config overrides for Stable Diffusion v1.5 at 512 px on the GPU found (or one of `total_gib`), and 'why'.

    The first of candidates() that fits the card with margin (fits()); kind "full" or "lora" tries only those (the
    course trains LoRA unless full fine-tuning is asked for). trainer.precision: "bf16" from compute capability 8.0
    (Ampere) on, "16" below it (a T4 reports bf16 as supported, through a slow emulation); with total_gib given,
    `capability` defaults to a T4's 7.5. bnb: whether bitsandbytes (8-bit AdamW) may be used; None = whether it is
    installed. Without CUDA (and no total_gib): float32 without checkpointing, AdamW (full fine-tuning unless kind is
    "lora"), at the published learning rate."""
    gpu = _gpu() if total_gib is None else (total_gib, capability or (7, 5))
    if gpu is None:
        s = Setting(16 if kind == "lora" else 0, False, False, train_text_encoder, "32")
        return {**overrides(s), "why": f"no CUDA GPU: the CPU's settings ({s.label()}) at the published learning rate"}
    total, cap = gpu
    bnb = _has_bitsandbytes() if bnb is None else bnb
    precision = "bf16" if cap >= (8, 0) else "16"
    options = candidates(bnb, precision, train_text_encoder, kind)
    eight_bit = [] if bnb or kind == "lora" else [x for x in candidates(True, precision, train_text_encoder, "full")
                                                  if x.use_8bit_adam and fits(x, total)]
    hint = f"; with bitsandbytes (pip install 'dbtutor[gpu]') {eight_bit[0].label()} would fit" if eight_bit else ""
    for s in options:
        if fits(s, total):
            e = estimate(s)
            why = (f"{s.label()}: estimated peak {e['total']:.1f} GiB ({upper(s):.1f} with float32-sized "
                   f"activations) on a {total:.1f} GiB GPU, within {1 - MARGIN:.0%} of it"
                   + ("" if s == options[0] else "; the better settings before it need more (python -m dbtutor.models.memory)")
                   + f"; trainer.precision={precision}: compute capability {cap[0]}.{cap[1]}")
            return {**overrides(s), "why": why + (hint if s.lora_rank else "")}     # full would have fitted
    s = options[-1]
    return {**overrides(s), "why": f"no {'' if kind == 'any' else kind + ' '}setting fits a {total:.1f} GiB GPU with "
                                   f"margin; {s.label()} needs the least (estimated {estimate(s)['total']:.1f} GiB): "
                                   f"it may run out of memory{hint}"}


def table(cards: dict = CARDS) -> str:
    """Markdown: each setting's parts and estimated peak, and whether gpu_settings would accept it on each card."""
    settings = [Setting(16, False), Setting(16, True), Setting(16, False, False, True), Setting(0, True, True),
                Setting(0, False, True), Setting(0, True), Setting(0, False), Setting(0, True, True, True),
                Setting(0, False, False, True), Setting(8, False, False, False, "32"),
                Setting(0, True, False, False, "32"), Setting(0, False, False, False, "32")]
    head = ["setting (512 px, batch 1+1; fp16/bf16 unless fp32)"] + list(PARTS) + ["estimated peak", "upper"] + \
        [f"{gb} GB ({gib} GiB)" for gb, gib in cards.items()] + ["activations from"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in settings:
        e = estimate(s)
        cells = [s.label()] + [f"{e[p]:.2f}" for p in PARTS] + [f"**{e['total']:.1f}**", f"{upper(s):.1f}"]
        cells += ["fits" if fits(s, gib) else "no" for gib in cards.values()] + [e["basis"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_baseline() -> float:
    """GiB resident in a fresh Python process once the libraries dbtutor trains with are imported (Linux)."""
    code = ("import torch, diffusers, transformers, accelerate, peft\n"
            "from diffusers import StableDiffusionPipeline\nfrom transformers import CLIPTextModel\n"
            "import dbtutor.train, dbtutor.models.sd15\ndbtutor.sd15.load_tokenizer()\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) * 1024 / GIB


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", action="store_true", help="measure the process baseline (PROCESS_GIB)")
    args = ap.parse_args(argv)
    if args.baseline:
        print(f"a Python process with the libraries loaded: {measure_baseline():.3f} GiB resident "
              f"(PROCESS_GIB = {PROCESS_GIB})")
        return
    print("ESTIMATES (GiB; nothing here ran on a GPU): Stable Diffusion v1.5 at 512 px, batch 1 instance + 1 class "
          "image. Activations: CPU peaks of bench/sd15_bench.py minus the parts counted here; fp16/bf16 autocast "
          f"x{HALF_ACTIVATIONS}; CUDA context {CUDA_CONTEXT_GIB}. 'fits': the estimate with float32-sized "
          f"activations ('upper') within {1 - MARGIN:.0%} of the card.\n")
    print(table())
    for gb, gib in CARDS.items():
        for bnb in (True, False):
            print(f"\ngpu_settings on {gb} GB ({gib} GiB), bitsandbytes {'installed' if bnb else 'missing'}: "
                  f"{gpu_settings(gib, bnb)}")


if __name__ == "__main__":
    main()
