"""The GPU memory estimate: its arithmetic against parts computed by hand, the LoRA counts against the model, and
gpu_settings' choice per card."""
import pytest
import torch

from dbtutor.models import memory
from dbtutor.models.memory import GIB, Setting, estimate, fits, gpu_settings
from dbtutor.models.sd15 import PUBLISHED_PARAMS


def test_the_parts_of_full_fine_tuning_with_8bit_adamw_in_fp16_by_hand():
    unet, te, vae = PUBLISHED_PARAMS["unet"], PUBLISHED_PARAMS["text_encoder"], PUBLISHED_PARAMS["vae"]
    e = estimate(Setting(lora_rank=0, gradient_checkpointing=True, use_8bit_adam=True, precision="16"))
    assert e["trained weights"] == pytest.approx(unet * 4 / GIB)        # the UNet in float32: 3.20 GiB
    assert e["gradients"] == pytest.approx(unet * 4 / GIB)
    assert e["optimizer state"] == pytest.approx(unet * 2 / GIB)        # two 8-bit moments
    assert e["autocast copies"] == pytest.approx(unet * 2 / GIB)        # one float16 copy of each trained weight
    assert e["frozen weights"] == pytest.approx((te + vae) * 2 / GIB)   # cast to float16 on the GPU
    # activations: the CPU peak with checkpointing (15.4 GiB, float32, AdamW) minus what it holds besides them
    fp32_static = (unet + te + vae) * 4 + unet * (4 + 8)
    act = 15.4 - fp32_static / GIB - memory.PROCESS_GIB
    assert e["activations"] == pytest.approx(act * memory.HALF_ACTIVATIONS)
    assert e["CUDA context"] == memory.CUDA_CONTEXT_GIB
    parts = [e[p] for p in memory.PARTS]
    assert e["total"] == pytest.approx(sum(parts)) and 11 < e["total"] < 12.5
    # in float32 the estimate of a measured setting gives back its CPU peak, less the process, plus CUDA's context
    for (rank, gc, te_trained), peak in memory.MEASURED_PEAK_GIB.items():
        if te_trained:
            continue              # the text encoder's two states share the larger activation value
        f = estimate(Setting(rank, gc, False, te_trained, "32"))["total"]
        assert f == pytest.approx(peak - memory.PROCESS_GIB + memory.CUDA_CONTEXT_GIB), (rank, gc)


def test_lora_parameter_counts_are_sd15s():
    from dbtutor.models.lora import TEXT_TARGETS, UNET_TARGETS
    from dbtutor.models.sd15 import build_models
    m = build_models("meta")
    for part, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        n = sum(x.in_features + x.out_features for name, x in m[part].named_modules()
                if isinstance(x, torch.nn.Linear) and any(name.endswith(t) for t in targets))
        assert n == memory.LORA_PARAMS_PER_RANK[part], part


@pytest.mark.parametrize("gb", sorted(memory.CARDS))
@pytest.mark.parametrize("bnb", [True, False])
def test_gpu_settings_pick_a_setting_that_fits_with_margin(gb, bnb):
    total = memory.CARDS[gb]
    got = gpu_settings(total, bnb)
    s = Setting(got["model.lora.rank"], got["model.gradient_checkpointing"], got["optim.use_8bit_adam"],
                precision=got["trainer.precision"])
    assert fits(s, total) and memory.upper(s) <= 0.9 * total and got["why"]
    assert got["optim.use_8bit_adam"] <= bnb                     # never without bitsandbytes
    assert got["optim.lr"] == (1e-4 if s.lora_rank else 5e-6)
    if gb == 12:
        assert s.lora_rank > 0                                    # never full fine-tuning on 12 GB
    # nothing earlier in the order of preference would have fitted
    for better in memory.candidates(bnb, s.precision)[:memory.candidates(bnb, s.precision).index(s)]:
        assert not fits(better, total)


def test_what_the_rule_picks_per_card():
    assert gpu_settings(11.7, True)["model.lora.rank"] == 16
    t4 = gpu_settings(14.7, True)
    assert (t4["model.lora.rank"], t4["model.gradient_checkpointing"], t4["optim.use_8bit_adam"]) == (0, True, True)
    assert t4["trainer.precision"] == "16" and gpu_settings(14.7, False)["model.lora.rank"] == 16
    big = gpu_settings(22.0, False, capability=(8, 9))
    assert (big["model.lora.rank"], big["model.gradient_checkpointing"], big["trainer.precision"]) == (0, False, "bf16")


def test_no_cuda_gives_the_cpu_settings():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    got = gpu_settings()
    assert got["trainer.precision"] == "32" and got["model.lora.rank"] == 0 and not got["optim.use_8bit_adam"]
    assert set(got) == {"model.lora.rank", "model.gradient_checkpointing", "optim.use_8bit_adam", "trainer.precision",
                        "optim.lr", "why"}


def test_the_table_marks_estimates():
    text = memory.table()
    assert text.count("\n") == 13 and "estimate" in text and "not measured" in text
    assert "| LoRA r=16, checkpointing off, AdamW, text encoder trained |" in text


@pytest.mark.parametrize("bnb", [True, False])
@pytest.mark.parametrize("te", [False, True])
def test_the_course_route_on_a_t4_is_lora_and_full_fine_tuning_only_when_asked(bnb, te):
    """kind="lora" (the course's choice) gives LoRA whatever is installed, the text encoder's adapters included,
    at diffusers' LoRA learning rate; kind="full" gives full fine-tuning, with 8-bit AdamW and checkpointing where
    that is what fits, at 5e-6 (2e-6 with the text encoder trained)."""
    lora = gpu_settings(14.7, bnb, train_text_encoder=te, kind="lora")
    s = Setting(lora["model.lora.rank"], lora["model.gradient_checkpointing"], lora["optim.use_8bit_adam"], te)
    assert s.lora_rank == 16 and not s.use_8bit_adam and lora["optim.lr"] == 1e-4 and fits(s, 14.7)
    assert "may run out of memory" not in lora["why"] and ("text encoder trained" in lora["why"]) == te
    full = gpu_settings(14.7, bnb, train_text_encoder=te, kind="full")
    assert full["model.lora.rank"] == 0 and full["optim.lr"] == (2e-6 if te else 5e-6)
    assert full["model.gradient_checkpointing"] and full["optim.use_8bit_adam"] == bnb
    f = Setting(0, True, bnb, te)
    assert ("may run out of memory" in full["why"]) == (not fits(f, 14.7))
    assert fits(f, 14.7) == (bnb and not te)          # diffusers: the text encoder trained too needs 24 GB
    if not bnb and not te:
        assert "pip install 'dbtutor[gpu]'" in full["why"]
    assert gpu_settings(22.0, bnb, kind="lora")["model.lora.rank"] == 16      # a larger card: still LoRA
    with pytest.raises(ValueError, match="kind='half' is not one of any, full, lora"):
        gpu_settings(14.7, bnb, kind="half")

