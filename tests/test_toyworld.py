"""The toy world, its subjects, the real CLIP tokenizer, and a few steps of pretraining every part."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from dbtutor.toyworld import world as W
from dbtutor.toyworld.subjects import SUBJECTS, render_subject
from conftest import ROOT, TOKENIZER


def test_vocabulary_covers_the_issue():
    assert {"ball", "box", "cone", "star"} <= set(W.OBJECTS) and len(W.OBJECTS) >= 6
    assert {"red", "orange", "yellow", "green", "blue", "purple"} < set(W.COLORS)
    assert {"plain", "striped", "dotted", "checkered"} <= set(W.PATTERNS)
    assert {"grass", "snow", "sky", "beach"} < set(W.SCENES)


def test_rendering_is_seeded_and_varied():
    a = W.sample_attrs(np.random.default_rng(1))
    assert np.array_equal(np.asarray(W.render(a, seed=3)), np.asarray(W.render(a, seed=3)))
    imgs = [np.asarray(img) for img, _, _ in W.sample_dataset(8, seed=0)]
    assert imgs[0].shape == (64, 64, 3) and imgs[0].dtype == np.uint8
    assert len({im.tobytes() for im in imgs}) == 8


def test_captions_leave_attributes_out_at_random():
    a = W.Attrs(object="ball", color="red", pattern="striped", scene="grass")
    assert W.caption(a) == "a photo of a red striped ball on the grass"
    rng = np.random.default_rng(0)
    caps = {W.caption(a, rng) for _ in range(300)}
    assert "a photo of a ball" in caps and "a photo of a red striped ball on the grass" in caps
    assert W.caption(W.Attrs(object="box", color="orange", pattern="plain", scene="sky")) == \
        "a photo of an orange box in the sky"


def test_base_world_never_shows_a_subject_look():
    rng = np.random.default_rng(0)
    assert all(W.sample_attrs(rng).look == "ordinary" for _ in range(2000))


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_shipped_subjects_match_their_renderer(name):
    folder = ROOT / "data" / "subjects" / name
    meta = json.loads((folder / "subject.json").read_text())
    assert meta["identifier"] in meta["instance_prompt"] and meta["class_noun"] in meta["regularization_prompt"]
    assert meta["identifier"] not in meta["regularization_prompt"]
    shipped = sorted(folder.glob("*.png"))
    assert 4 <= len(shipped) <= 5
    from PIL import Image
    for im, path in zip(render_subject(name), shipped):
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(path).convert("RGB"))), path


def test_tokenizer_is_clips_bpe():
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok("sks").input_ids == [49406, 48136, 49407]              # as in Stable Diffusion's tokenizer
    assert tok("ohwx").input_ids == [49406, 47993, 49407]
    assert tok.tokenize("a photo of a dog") == ["a</w>", "photo</w>", "of</w>", "a</w>", "dog</w>"]
    assert (TOKENIZER / "LICENSE-open_clip.txt").exists()


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open-clip-torch not installed")
def test_shipped_tokenizer_files_are_rebuilt_identically(tmp_path):
    from dbtutor.toyworld.tokenizer import write_tokenizer
    write_tokenizer(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER / name).read_bytes()


@pytest.mark.slow
def test_pretrain_every_part_a_few_steps_and_resume(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    from dbtutor.toyworld import pretrain
    args = ["--out", str(tmp_path / "models"), "--work", str(tmp_path / "work"), "--n-images", "300",
            "--vae-steps", "3", "--vae-full-steps", "1", "--names-steps", "2"]
    pretrain.main(args + ["--unet-steps", "2"])
    pretrain.main(args + ["--unet-steps", "4"])                      # continues the UNet from step 2
    out = capsys.readouterr().out
    assert "[unet] resuming from step 2" in out
    assert "[names] the unet stage changed: the names stage starts again" in out    # it continues the new UNet
    log = (tmp_path / "work" / "log.txt").read_text()
    assert "unet step 4/4" in log and "vae step 3/3" in log and log.count("vae step 3/3") == 1
    assert log.count("names step 2/2") == 2
    pretrain.main(args + ["--unet-steps", "4"])                      # nothing changed: every stage is done
    assert "starts again" not in capsys.readouterr().out
    assert (tmp_path / "work" / "log.txt").read_text().count("names step 2/2") == 2
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "models" / "toyworld")
    te = load_file(tmp_path / "models" / "toyworld" / "text_encoder" / "model.safetensors")
    assert te and all(k.startswith("text_model.") for k in te)          # SD's layout, which every transformers reads
    for name in ("vocab.json", "merges.txt", "LICENSE-open_clip.txt"):
        assert (tmp_path / "models" / "toyworld" / "tokenizer" / name).read_bytes() == (TOKENIZER / name).read_bytes()
    assert all(next(getattr(pipe, n).parameters()).dtype == torch.float32 for n in ("unet", "vae", "text_encoder"))
    images = pipe("a photo of a red ball", num_inference_steps=2).images
    assert images[0].size == (64, 64)
    assert not (tmp_path / "models" / "toyworld-judge").exists()      # the judge has its own command

    # one command with warm-restart ends (2,4) reproduces "2 steps, then extended to 4" exactly
    import shutil
    shutil.copytree(tmp_path / "work", tmp_path / "work2", ignore=shutil.ignore_patterns("unet.ckpt", "log.txt"))
    pretrain.main(["--out", str(tmp_path / "models2"), "--work", str(tmp_path / "work2")] + args[4:]
                  + ["--unet-steps", "2,4"])
    a, b = (load_file(tmp_path / m / "toyworld" / "unet" / "diffusion_pytorch_model.safetensors")
            for m in ("models", "models2"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    # the default recipe's loss is plain MSE (the log shows one loss); --snr-gamma 5 weights it with Min-SNR and
    # logs the plain MSE beside it
    assert all("mse=" not in line for line in log.splitlines() if line.startswith("unet"))     # default: plain MSE
    shutil.copytree(tmp_path / "work", tmp_path / "work3", ignore=shutil.ignore_patterns("unet.ckpt", "log.txt"))
    args3 = (["--out", str(tmp_path / "models3"), "--work", str(tmp_path / "work3")] + args[4:]
             + ["--snr-gamma", "5", "--noise-offset", "0"])
    pretrain.main(args3 + ["--unet-steps", "2"])
    log3 = (tmp_path / "work3" / "log.txt").read_text()
    assert "unet step 2/2" in log3 and all("mse=" in line for line in log3.splitlines() if line.startswith("unet"))
    # --snr-gamma-steps 4: extended to 4, steps 3-4 still use Min-SNR; to 5, step 5 (index 4) is plain MSE
    pretrain.main(args3 + ["--unet-steps", "2,4", "--snr-gamma-steps", "4"])
    pretrain.main(args3 + ["--unet-steps", "2,4,5", "--snr-gamma-steps", "4"])
    lines = [line for line in (tmp_path / "work3" / "log.txt").read_text().splitlines() if line.startswith("unet")]
    assert lines[-1].startswith("unet step 5/5") and "mse=" not in lines[-1]
    assert any(line.startswith("unet step 4/") and "mse=" in line for line in lines)


def test_export_keeps_the_model_card(tmp_path, monkeypatch):
    from conftest import make_tiny_pipeline
    from dbtutor.core.errors import ConfigError
    from dbtutor.toyworld import pretrain
    pipe = make_tiny_pipeline()
    out = tmp_path / "models"
    parts = (pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer, 0.5)
    pretrain.export(out, *parts)                         # a new folder gets the project's card of the shipped model
    card = out / "toyworld" / "README.md"
    assert card.read_text() == pretrain.SHIPPED_CARD.read_text() and "license: mit" in card.read_text()
    card.write_text("# my retrained model\n")
    pretrain.export(out, *parts)                         # a retrain keeps the card it finds
    assert card.read_text() == "# my retrained model\n"
    monkeypatch.setattr(pretrain, "SHIPPED_CARD", tmp_path / "missing.md")
    with pytest.raises(ConfigError, match="no model card to export"):
        pretrain.model_card(tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match="pretrain: error: no model card"):    # before any stage runs
        pretrain.main(["--out", str(tmp_path / "elsewhere"), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_train_judge_a_few_steps_prints_accuracy_and_resumes(tmp_path, capsys):
    from dbtutor.toyworld import train_judge
    from dbtutor.toyworld.judge import HEADS, load_judge, predict
    from dbtutor.toyworld.world import render, sample_attrs
    args = ["--out", str(tmp_path / "models"), "--work", str(tmp_path / "work"), "--n-images", "200"]
    train_judge.main(args + ["--steps", "2"])
    train_judge.main(args + ["--steps", "3"])                          # continues from step 2
    out = capsys.readouterr().out
    assert "[judge] resuming from step 2" in out and out.count("judge held-out accuracy:") == 2
    acc = json.loads(out.strip().splitlines()[-2].split(":", 1)[1])
    assert set(acc) == set(HEADS) and all(0 <= v <= 1 for v in acc.values())
    meta = json.loads((tmp_path / "models" / "toyworld-judge" / "judge.json").read_text())
    assert meta["heldout_accuracy"] == pytest.approx(acc, abs=1e-4)
    judge = load_judge(tmp_path / "models" / "toyworld-judge")
    images = [render(sample_attrs(np.random.default_rng(i))) for i in range(3)]
    pred = predict(judge, images)
    assert set(pred) == set(HEADS) and all(len(v) == 3 for v in pred.values())
    with pytest.raises(FileNotFoundError, match="train_judge"):
        load_judge(tmp_path / "nowhere")


def test_warm_restart_schedule_matches_an_extended_run():
    from dbtutor.toyworld.pretrain import _ends
    from dbtutor.toyworld.training import lr_factor
    assert [lr_factor(s, (300, 900), 20) for s in range(301)] == [lr_factor(s, (300,), 20) for s in range(301)]
    assert [lr_factor(s, (300, 900), 20) for s in range(301, 900)] == [lr_factor(s, (900,), 20) for s in range(301, 900)]
    assert lr_factor(300, (300,), 20) < 0.11 < lr_factor(301, (300, 900), 20)
    assert _ends("3000,9000") == (3000, 9000)
    with pytest.raises(Exception, match="increasing"):
        _ends("9000,3000")


def test_min_snr_weights_downweight_only_low_noise_steps():
    from dbtutor.toyworld.models import make_noise_scheduler
    from dbtutor.toyworld.pretrain_stages import min_snr_weight
    sched = make_noise_scheduler()
    t = torch.arange(0, 1000, 50)
    w = min_snr_weight(sched, t, 5.0)
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    assert torch.all(w <= 1) and torch.all(w[snr <= 5] == 1) and torch.all(w[snr > 5] < 1)
    assert torch.all(w[1:] >= w[:-1])                                 # more noise, never less weight
    assert torch.allclose(w[snr > 5], 5 / snr[snr > 5])
    assert torch.equal(min_snr_weight(sched, t, 0.0), torch.ones(len(t)))


def test_names_are_rare_single_tokens_spread_evenly_over_the_looks_and_never_an_identifier():
    import numpy as np
    from collections import Counter
    from dbtutor.toyworld.names import NAMES_PER_LOOK, RESERVED, named_caption, names_by_look, world_names
    from dbtutor.toyworld.world import COLORS, OBJECTS, PATTERNS, sample_attrs
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    names = world_names(TOKENIZER)
    assert names == world_names(TOKENIZER) and len(names) == len(COLORS) * len(PATTERNS) * NAMES_PER_LOOK
    assert all(len(tok(n).input_ids) == 3 for n in names)                 # <start> name <end>: one token each
    assert not set(names) & (RESERVED | {"sks", "ohwx"} | set(COLORS) | set(OBJECTS) | set(PATTERNS))
    assert set(Counter(names.values()).values()) == {NAMES_PER_LOOK}     # every colour x pattern equally often
    by_look, rng = names_by_look(names), np.random.default_rng(0)
    caps = [(a, named_caption(a, rng, by_look, 0.5)) for a in (sample_attrs(rng) for _ in range(400))]
    named = [(a, c) for a, c in caps if c.split()[3] in names]
    assert 150 < len(named) < 250
    for a, c in named:                       # the name stands for the image's own colour and pattern, never a subject's
        assert names[c.split()[3]] == (a.color, a.pattern) and c.split()[4] == a.object and a.color not in c
    look = sample_attrs(rng, look="twotone")
    assert all(c.split()[3] not in names for c in (named_caption(look, rng, by_look, 1.0) for _ in range(20)))


def test_the_control_of_the_names_stage_uses_the_same_names_for_any_look():
    """pretrain --names-meaning random: the same rare words, as often, but no name stands for a look."""
    import numpy as np
    from dbtutor.toyworld.names import named_caption, names_by_look, names_without_meaning, world_names
    from dbtutor.toyworld.world import sample_attrs
    names = world_names(TOKENIZER)
    by_look = names_without_meaning(names_by_look(names))
    assert by_look.keys() == names_by_look(names).keys() and all(v == sorted(names) for v in by_look.values())
    rng = np.random.default_rng(0)
    caps = [(a, named_caption(a, rng, by_look, 0.5)) for a in (sample_attrs(rng) for _ in range(400))]
    named = [(a, c.split()[3]) for a, c in caps if c.split()[3] in names]
    assert 150 < len(named) < 250
    assert sum(names[n] != (a.color, a.pattern) for a, n in named) > 0.9 * len(named)     # names mean nothing
    assert len({n for _, n in named}) > 100                                               # ... and are all used

