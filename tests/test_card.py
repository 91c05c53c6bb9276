"""The model card in every saved run (README.md with the Hub's YAML header), refreshed by `dbtutor eval`; and
`dbtutor push --dry-run`, which lists what would go to the Hub without a token or the network."""
import json
from pathlib import Path

import pytest
import torch
import yaml

import dbtutor
from dbtutor.sharing.card import CARD, SAMPLES, base_license, base_names, hub_id, refresh_card, run_stamp
from dbtutor.models.lora import WEIGHT_NAME

from conftest import ROOT, SUBJECT


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture
def random_judge(tmp_path):
    from dbtutor.toyworld import judge as J
    torch.manual_seed(0)
    J.save_judge(J.Judge(), tmp_path / "judge")
    return tmp_path / "judge"


def test_every_saved_run_has_a_model_card(tiny_config, tmp_path):
    cfg = tiny_config(**{"model.prior_loss_weight": 0.5, "optim.lr": 2e-4})
    out = dbtutor.train(cfg).output_dir
    meta, body = front_matter((out / CARD).read_text())
    assert (out / "model_index.json").exists() and (out / SAMPLES).exists()
    assert meta["instance_prompt"] == "a photo of sks ball" and meta["library_name"] == "diffusers"
    assert "dreambooth" in meta["tags"] and "lora" not in meta["tags"]
    assert meta["license"] == "other" and "base_model" not in meta     # a local random model: no hub id, no license
    for row in (f"| base model | `{Path(cfg.model.pretrained).name}` |", "| class prompt | a photo of a ball |",
                "| identifier | sks (class: ball) |", "| prior preservation | yes, λ = 0.5, 6 class images",
                "| steps | 4 (trainer.max_steps 4)", "| learning rate | 0.0002 (constant", "| precision | 32 |",
                "| LoRA rank | - (full fine-tuning) |", f"![samples]({SAMPLES})",
                "# run this in the run's folder", "StableDiffusionPipeline.from_pretrained('.')",
                "see the base model's card"):
        assert row in body, row
    text = (out / CARD).read_text()                                     # no folder of this machine
    for folder in (tmp_path, Path(cfg.model.pretrained).parent, ROOT):
        assert str(folder) not in text, folder
    assert "## Evaluation" not in body
    assert "not Stable Diffusion 1.x/2.x's architecture" in body       # the tiny UNet has no web-UI layout
    from PIL import Image
    assert Image.open(out / SAMPLES).size == (2 * 32 + 4, 2 * 32 + 4)  # 2 prompts x 2 seeds of 32 px


def test_a_lora_run_card_and_no_grid(tiny_config):
    """A LoRA run saved as its adapters alone (no merged pipeline) has its card too."""
    out = dbtutor.train(tiny_config(**{"model.lora.rank": 2, "model.with_prior_preservation": False,
                                       "model.sampling.card_seeds": 0, "model.lora.save_merged": False})).output_dir
    meta, body = front_matter((out / CARD).read_text())
    assert not (out / "model_index.json").exists() and "merged in" not in body
    assert "lora" in meta["tags"] and not (out / SAMPLES).exists() and "![samples]" not in body
    assert "| prior preservation | no |" in body and "| LoRA rank | 2 |" in body
    assert f"pipe.load_lora_weights('.', weight_name={WEIGHT_NAME!r})" in body
    assert "from_pretrained('../../tiny_sd0')   # the base model: a local folder named tiny_sd0" in body


def test_licenses_of_base_models(tmp_path):
    assert base_license(str(ROOT / "data" / "models" / "toyworld"))[0] == "mit"
    assert base_license("stable-diffusion-v1-5/stable-diffusion-v1-5")[0] == "creativeml-openrail-m"
    assert base_license("stabilityai/stable-diffusion-2-1")[0] == "openrail++"
    assert base_license("someone/unknown-model") == ("other", "see the base model's card")
    local = tmp_path / "mine"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# a model\n")
    assert base_license(str(local))[0] == "apache-2.0"
    cached = tmp_path / "hub" / "models--runwayml--stable-diffusion-v1-5" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    assert hub_id(str(cached)) == "runwayml/stable-diffusion-v1-5"
    assert base_license(str(cached))[0] == "creativeml-openrail-m"
    assert hub_id(str(local)) is None


@pytest.mark.slow
def test_eval_puts_its_numbers_on_the_card_of_the_run_it_measured(tiny_config, random_judge, capsys):
    from dbtutor.commands.cli import main
    cfg = tiny_config()
    out = dbtutor.train(cfg).output_dir
    common = [f"model.pretrained={cfg.model.pretrained}", f"output_dir={out}", f"model.data.instance_dir={SUBJECT}",
              "model.sampling.num_inference_steps=2", "trainer.device=cpu",
              f"model.data.regularization_dir={cfg.model.data.regularization_dir}"]
    assert main(["eval", "--judge", str(random_judge), "--num-samples", "2", "--class-samples", "2", *common]) == 0
    assert f"updated the model card {out / CARD}" in capsys.readouterr().out
    res = json.loads((out / "eval.json").read_text())
    assert res["run"] == run_stamp(out)
    _, body = front_matter((out / CARD).read_text())
    assert "## Evaluation" in body and f"| pres_attr | {res['metrics']['pres_attr']:.3f} | lower |" in body
    # trained on: the old eval.json describes another model, so the new card leaves its numbers out
    dbtutor.train(tiny_config(**{"trainer.max_steps": 5}))
    assert "## Evaluation" not in (out / CARD).read_text()
    assert refresh_card(out) and "## Evaluation" not in (out / CARD).read_text()
    assert refresh_card(out.parent) is None                            # not a run: nothing written


@pytest.mark.slow
@pytest.mark.versions
def test_push_dry_run_lists_files_offline(tiny_config, monkeypatch, capsys):
    from dbtutor.sharing import push as P
    from dbtutor.commands.cli import main
    out = dbtutor.train(tiny_config(**{"model.lora.rank": 2, "trainer.keep_checkpoints": True})).output_dir
    (out / "eval.json").write_text(json.dumps({"metrics": {}, "run": "another run"}))
    assert main(["push", str(out), "--repo-id", "someone/sks-ball", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("would upload ") and "to someone/sks-ball:" in printed
    names = [line.split()[-1] for line in printed.splitlines()[1:]]
    assert {CARD, SAMPLES, WEIGHT_NAME, "dreambooth.yaml", "history.json", "unet/config.json"} <= set(names)
    assert not any(n.startswith(("checkpoints/", "latents/", ".")) or n == "eval.json" for n in names)
    sizes = dict((line.split()[-1], int(line.split()[0].replace(",", ""))) for line in printed.splitlines()[1:])
    assert sizes[WEIGHT_NAME] == (out / WEIGHT_NAME).stat().st_size
    uploaded = P.upload_list(out, "someone/sks-ball")
    card = dict(uploaded)[CARD].decode()
    assert "pipe.load_lora_weights('someone/sks-ball', weight_name=" in card   # the Hub's card loads the repo
    assert str(out) not in card                                        # nothing points at this machine's folder
    for name, src in uploaded:                                         # nor any other text file that is uploaded
        if name.endswith((".json", ".yaml", ".md", ".txt")):
            text = src.decode() if isinstance(src, bytes) else src.read_text()
            assert str(out.parent) not in text and str(ROOT) not in text, name
    shared = yaml.safe_load(dict(uploaded)["dreambooth.yaml"].decode())
    assert shared["output_dir"] == "." and shared["model"]["data"]["regularization_dir"] == "reg"
    assert shared["model"]["data"]["instance_dir"] == "${root:}/" + SUBJECT.relative_to(ROOT).as_posix()

    def no_hub(*a, **k):
        raise AssertionError("a dry run or a refused push must not reach the Hub")
    monkeypatch.setattr(P, "_token", lambda hf: None)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", no_hub)
    assert main(["push", str(out), "--repo-id", "someone/sks-ball"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert main(["push", str(out), "--repo-id", "not a repo", "--dry-run"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert main(["push", str(Path(out).parent), "--repo-id", "x/y", "--dry-run"]) == 2


def test_a_failing_sample_grid_costs_only_the_grid(tiny_config, monkeypatch):
    import dbtutor.models.pipeline

    def out_of_memory(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    monkeypatch.setattr(dbtutor.models.pipeline, "sample", out_of_memory)
    with pytest.warns(UserWarning, match="no sample grid in the model card .RuntimeError: CUDA out of memory"):
        out = dbtutor.train(tiny_config(**{"trainer.max_steps": 1, "trainer.validation.every": 0})).output_dir
    assert (out / "model_index.json").exists() and (out / CARD).exists() and not (out / SAMPLES).exists()


def test_the_card_names_the_base_model_without_this_machines_folders(tmp_path):
    """By hub id (also read off a hub cache folder); else in the text by its path in the project, and in the code
    relative to the run folder, or on the Hub (no run folder) by its path in the project; a folder that shares only
    the file system's root with the run is named, never spelled out."""
    toy = ROOT / "data" / "models" / "toyworld"
    assert base_names(str(toy), str(ROOT / "work" / "runs" / "x")) == \
        ("data/models/toyworld", "../../../data/models/toyworld", "   # the base model: dbtutor's data/models/toyworld")
    shown, code, note = base_names(str(toy), None)                     # the Hub's card: from a dbtutor clone
    assert shown == code == "data/models/toyworld" and "run this in the dbtutor folder" in note
    assert base_names("stable-diffusion-v1-5/stable-diffusion-v1-5", str(tmp_path))[:2] == \
        ("stable-diffusion-v1-5/stable-diffusion-v1-5",) * 2
    cached = tmp_path / "hub" / "models--runwayml--stable-diffusion-v1-5" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    assert base_names(str(cached), str(tmp_path / "run"))[1] == "runwayml/stable-diffusion-v1-5"
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert base_names(str(tmp_path / "models" / "mine"), str(tmp_path / "runs" / "a"))[1] == "../../models/mine"
    elsewhere = Path("/proc/self").resolve()                            # shares only / with the run folder
    shown, code, note = base_names(str(elsewhere), str(tmp_path / "run"))
    assert shown == code == elsewhere.name and "give its path" in note


def test_the_cards_metadata_round_trips_through_huggingface_hub(tiny_config):
    """huggingface_hub's ModelCard reads back the header dbtutor wrote (the Hub's own parser), and writes the same
    card again; its metadata are today's keys and values."""
    from huggingface_hub import ModelCard
    out = dbtutor.train(tiny_config(**{"model.lora.rank": 2, "trainer.max_steps": 1, "model.sampling.card_seeds": 0,
                                       "trainer.validation.every": 0, "model.lora.save_merged": False})).output_dir
    text = (out / CARD).read_text()
    card = ModelCard.load(out / CARD)
    meta, body = front_matter(text)
    assert card.data.to_dict() == meta == {
        "library_name": "diffusers", "license": "other", "instance_prompt": "a photo of sks ball", "inference": True,
        "tags": ["text-to-image", "diffusers", "stable-diffusion", "stable-diffusion-diffusers", "dreambooth",
                 "dbtutor", "lora"]}
    assert str(card) == text and card.text.strip() == body.strip()
    from omegaconf import OmegaConf

    from dbtutor.sharing.card import card_text
    cfg = OmegaConf.load(out / "dreambooth.yaml")
    cfg.model.pretrained = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # a hub base model adds base_model
    (out / "hub.md").write_text(card_text(out, cfg, json.loads((out / "history.json").read_text())))
    assert ModelCard.load(out / "hub.md").data.to_dict() == {
        **meta, "base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "license": "creativeml-openrail-m"}
