"""The DreamBooth metrics on cases with known answers, both back ends, `dbtutor eval` and the ablation runner."""
import hashlib
import json
import sys

import pytest
import torch
from PIL import Image

from dbtutor.measuring import evaluate as E
from dbtutor.core.errors import ConfigError
from dbtutor.toyworld import judge as J
from dbtutor.toyworld.world import SCENES, Attrs, render

from conftest import DOG6, ROOT, SUBJECT, load_script

BALL = E.world_prompts(json.loads((SUBJECT / "subject.json").read_text()))


def flat(color):
    return Image.new("RGB", (64, 64), color)


# ----------------------------------------------------------------------------- metrics on embeddings

def test_similarity_and_diversity_known_answers():
    a = torch.randn(1, 8)
    same = a.repeat(5, 1)
    assert E.cross_similarity(same, a) == pytest.approx(1.0, abs=1e-6)
    assert E.self_similarity(same) == pytest.approx(1.0, abs=1e-6)
    assert E.diversity(same) == pytest.approx(0.0, abs=1e-6)          # one repeated image: DIV 0
    eye = torch.eye(4)
    assert E.cross_similarity(eye[:2], eye[2:]) == pytest.approx(0.0)  # orthogonal sets
    assert E.diversity(eye) == pytest.approx(1.0)                      # all orthogonal: DIV 1
    assert E.diversity(torch.stack([eye[0], -eye[0]])) == pytest.approx(2.0)
    assert E.cross_similarity(torch.stack([eye[0], eye[1]]), eye[:1]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        E.diversity(a)


# ----------------------------------------------------------------------------- prompts

def test_world_prompt_set_in_the_papers_spirit():
    assert BALL.identifier == "sks" and BALL.class_noun == "ball" and BALL.look == "twotone"
    assert BALL.subject[0] == "a photo of sks ball"
    assert "a photo of sks ball on the beach" in BALL.subject and "a photo of sks ball on the snow" in BALL.subject
    assert "a photo of a purple sks ball" in BALL.subject and "a photo of an orange sks ball" in BALL.subject
    assert BALL.class_prompt == "a photo of a ball"
    assert BALL.groups.count("recontext") == len(SCENES) and BALL.groups.count("property") == 3
    box = E.prompt_set(ROOT / "data" / "subjects" / "bullseye_box")
    assert "a photo of ohwx box at night" in box.subject and box.class_prompt == "a photo of a box"
    # the config's prompts win: another identifier is followed
    other = E.prompt_set(SUBJECT, "a photo of zwx ball", "a photo of a ball")
    assert "a photo of a green zwx ball" in other.subject


def test_paper_prompts_for_a_real_subject():
    ps = E.prompt_set(DOG6, "a photo of sks dog", "a photo of a dog")
    assert ps.look is None and len(ps.subject) == 26                    # instance prompt + the paper's 25
    assert "a sks dog in the jungle" in ps.subject and "a purple sks dog" in ps.subject
    assert "a sks dog wearing a santa hat" in ps.subject
    assert ps.groups[ps.subject.index("a red sks dog")] == "property"
    objects = E.paper_prompts("sks", "teapot", live=False)
    assert len(objects) == 25 and "a sks teapot floating in an ocean of milk" in objects
    with pytest.raises(ConfigError, match="identifier"):
        E.split_prompts("a photo of a dog", "a photo of a dog")
    with pytest.raises(ConfigError, match="subject.json"):
        E.prompt_set(DOG6)


def test_prompt_attributes_and_agreement():
    assert E.prompt_attributes("a photo of a purple sks ball on the beach") == \
        {"object": "ball", "color": "purple", "scene": "beach"}
    assert E.prompt_attributes("a photo of sks ball") == {"object": "ball"}
    assert E.prompt_attributes("a photo of a red striped box at night") == \
        {"object": "box", "color": "red", "pattern": "striped", "scene": "night"}
    judged = {"object": ["ball", "box"], "color": ["purple", "green"], "pattern": ["plain", "dotted"],
              "scene": ["beach", "snow"], "look": ["ordinary", "ordinary"]}
    want = E.prompt_attributes("a photo of a purple ball on the beach")
    assert E.agreement(want, judged, 0) == 1.0
    assert E.agreement(want, judged, 1) == 0.0                           # disjoint attributes
    twotone = dict(judged, look=["twotone", "twotone"])
    assert E.agreement(want, twotone, 0) == 0.0                          # a colour needs an ordinary look
    assert E.agreement({"object": "ball"}, twotone, 0) == 1.0


# ----------------------------------------------------------------------------- judge back end

class OracleJudge(torch.nn.Module):
    """A judge that knows the attributes of every image it will see (by content hash): its answers are known."""

    def __init__(self, table: dict):
        super().__init__()
        self.table = table

    def _attrs(self, x):
        return [self.table[hashlib.sha1(xi.numpy().tobytes()).hexdigest()] for xi in x]

    def embed(self, x):
        rows = []
        for a in self._attrs(x):
            v = torch.zeros(sum(len(h) for h in J.HEADS.values()))
            off = 0
            for k, names in J.HEADS.items():
                v[off + names.index(getattr(a, k))] = 1
                off += len(names)
            rows.append(v)
        return torch.stack(rows)

    def forward(self, x):
        attrs = self._attrs(x)
        return {k: torch.stack([torch.eye(len(n))[n.index(getattr(a, k))] for a in attrs]) for k, n in J.HEADS.items()}


def rendered(table, **kw):
    a = Attrs(**{"object": "ball", "color": "red", "pattern": "plain", "scene": "grass", **kw})
    im = render(a, seed=len(table))
    table[hashlib.sha1(J.to_tensor([im])[0].numpy().tobytes()).hexdigest()] = a
    return im


def test_judge_backend_known_answers():
    table = {}
    real = [rendered(table, look="twotone", scene=s) for s in ("grass", "snow")]
    # a model that obeys every prompt and keeps the class itself
    good = {}
    for p, g in zip(BALL.subject, BALL.groups):
        want = E.prompt_attributes(p)
        if g == "property":
            good[p] = [rendered(table, color=want["color"], scene="road") for _ in range(2)]
        else:
            good[p] = [rendered(table, look="twotone", scene=want.get("scene", "grass")) for _ in range(2)]
    good[BALL.class_prompt] = [rendered(table, color=c, scene="sky") for c in ("green", "blue", "pink")]
    m, per = E.score_judge(good, real, BALL, OracleJudge(table))
    assert m["subject_attr"] == pytest.approx(7 / 10)    # instance + 6 scenes; purple/green/orange are ordinary
    assert m["prompt_attr"] == 1.0 and m["pres_attr"] == 0.0
    assert per["a photo of sks ball on the snow"]["subject_attr"] == 1.0
    assert per["a photo of a purple sks ball"]["prompt_attr"] == 1.0
    # a drifted model: every prompt, the class included, gives the subject on the grass
    drift = {p: [rendered(table, look="twotone", scene="grass") for _ in range(2)] for p in good}
    m, per = E.score_judge(drift, real, BALL, OracleJudge(table))
    assert m["subject_attr"] == 1.0 and m["pres_attr"] == 1.0
    assert m["prompt_attr"] == pytest.approx(2 / 10)     # only "a photo of sks ball" and "... on the grass" agree
    assert m["div"] == pytest.approx(0.0, abs=1e-6)      # two samples with the same attributes
    assert m["pres"] > 0.5                               # class samples embed like the real subject


def test_judge_backend_identical_images_random_judge():
    torch.manual_seed(0)
    judge = J.Judge().eval()
    im = render(Attrs("ball", "red", "plain", "snow", look="twotone"), seed=3)
    samples = {p: [im, im.copy()] for p in BALL.subject + [BALL.class_prompt]}
    m, _ = E.score_judge(samples, [im], BALL, judge)
    assert m["subject_sim"] == pytest.approx(1.0, abs=1e-5) and m["pres"] == pytest.approx(1.0, abs=1e-5)
    assert m["div"] == pytest.approx(0.0, abs=1e-5) and m["div_class"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.skipif(not (E.DEFAULT_JUDGE / "judge.safetensors").exists(), reason="the trained judge is not built yet")
def test_trained_judge_reads_the_subject_and_the_class():
    judge = E.load_judge_or_fail(E.DEFAULT_JUDGE)
    table = {}
    subj = [rendered(table, look="twotone", scene=s) for s in ("beach", "snow", "road")]
    plain = [rendered(table, color=c, scene=s) for c, s in (("green", "grass"), ("yellow", "snow"), ("purple", "sky"))]
    samples = {p: subj for p in BALL.subject}
    samples[BALL.class_prompt] = plain
    m, _ = E.score_judge(samples, subj, BALL, judge)
    assert m["subject_attr"] == 1.0 and m["pres_attr"] == 0.0 and m["subject_sim"] > m["pres"]


# ----------------------------------------------------------------------------- clip back end

def test_to_pixels_resizes_crops_and_normalises():
    x = E.to_pixels([Image.new("RGB", (40, 20), (255, 0, 128))], 16, 18, E.CLIP_MEAN, E.CLIP_STD)
    assert x.shape == (1, 3, 16, 16)
    want = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(E.CLIP_MEAN)) / torch.tensor(E.CLIP_STD)
    assert torch.allclose(x[0, :, 8, 8], want, atol=1e-5)


def test_clip_backend_on_tiny_random_models(tiny_encoders):
    enc = E.Encoders(tiny_encoders / "clip", tiny_encoders / "dino")
    assert enc.clip_size == 32 and enc.dino_size == 32
    ps = E.prompt_set(DOG6, "a photo of sks dog", "a photo of a dog")
    real = [flat((200, 120, 40))]
    samples = {p: [real[0], real[0].copy()] for p in ps.subject + [ps.class_prompt]}
    m, per = E.score_clip(samples, real, ps, enc)
    for k in ("subject_sim", "clip_i", "pres"):
        assert m[k] == pytest.approx(1.0, abs=1e-5), k
    assert m["div"] == pytest.approx(0.0, abs=1e-5)
    # CLIP-T reads the prompt without the identifier
    t = enc.clip_texts(["a dog in the jungle"])[0]
    want = float(enc.clip_images(real)[0] @ t)
    assert per["a sks dog in the jungle"]["clip_t"] == pytest.approx(want, abs=1e-5)
    other = {p: [flat((10, 200, 30)), flat((30, 30, 220))] for p in samples}
    m2, _ = E.score_clip(other, real, ps, enc)
    assert m2["subject_sim"] < 1.0 and m2["div"] > 0.0


def test_clip_backend_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--clip-model"):
        E.Encoders(tmp_path / "nothing", tmp_path / "nothing")


# ----------------------------------------------------------------------------- the command line and the ablation

@pytest.fixture(scope="module")
def random_judge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    J.save_judge(J.Judge(), folder)
    return folder


def test_cli_eval_on_the_tiny_pipeline(tiny_pipeline_dir, random_judge, tmp_path, capsys):
    from dbtutor.commands.cli import main
    common = [f"output_dir={tmp_path / 'out'}", f"model.data.instance_dir={SUBJECT}",
              "model.sampling.num_inference_steps=2", "trainer.device=cpu"]
    assert main(["eval", "--judge", str(random_judge), *common]) == 2          # nothing trained there yet
    assert "dbtutor train" in capsys.readouterr().err
    rc = main(["eval", "--model", str(tiny_pipeline_dir), "--judge", str(random_judge), "--num-samples", "2",
               "--class-samples", "3", *common])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pres_attr" in printed and "subject_attr" in printed
    res = json.loads((tmp_path / "out" / "eval.json").read_text())
    m = res["metrics"]
    assert 0 <= m["subject_attr"] <= 1 and 0 <= m["pres_attr"] <= 1 and -1 <= m["pres"] <= 1 and m["div"] >= 0
    assert res["settings"]["num_samples"] == 2 and len(res["per_prompt"]) == len(BALL.subject) + 1
    assert (tmp_path / "out" / "eval.png").exists()
    assert main(["eval", "--backend", "judge", "--model", str(tiny_pipeline_dir), "--judge", str(random_judge),
                 f"output_dir={tmp_path / 'out'}", f"model.data.instance_dir={DOG6}"]) == 2
    assert "backend=clip" in capsys.readouterr().err


def test_summary_mean_and_std():
    from dbtutor.commands.ablate import markdown, summarise
    runs = [{"metrics": {"pres_attr": v, "div": 0.5}} for v in (0.0, 0.5, 1.0)]
    table = summarise({("ball", "no_prior"): runs, ("box", "no_prior"): runs[:1]}, keys=("pres_attr", "div"))
    assert table["ball"]["no_prior"]["pres_attr"] == [0.5, 0.5, 3]
    assert table["box"]["no_prior"]["div"] == [0.5, 0.0, 1]
    assert table["all subjects"]["no_prior"]["pres_attr"][2] == 4
    assert "0.500 ± 0.500" in markdown(table, keys=("pres_attr", "div"))


@pytest.mark.slow
def test_ablate_end_to_end_and_resume(tiny_config, random_judge, tmp_path, monkeypatch):
    from dbtutor.commands import ablate as A
    cfg = tiny_config(**{"trainer.device": "cpu"})
    kw = dict(subjects=["twotone_ball"], seeds=[0], weights=[0, 1], steps=2, work=tmp_path / "abl",
              judge_dir=random_judge, num_samples=2, class_samples=2, num_reg_images=2)
    out = A.ablate(cfg, **kw)
    work = tmp_path / "abl"
    for run in ("base", "no_prior/seed0", "prior_w1/seed0"):
        assert (work / "runs" / "twotone_ball" / run / "eval.json").exists(), run
    assert not (work / "runs" / "twotone_ball" / "prior_w1" / "seed0" / "unet").exists()   # models not kept
    assert set(out["table"]["twotone_ball"]) == {"base", "no_prior", "prior_w1"}
    for f in ("results.md", "results.json", "ablation.png"):
        assert (work / f).exists()
    res = json.loads((work / "results.json").read_text())        # what the docs' tables are made from
    assert res["kind"] == "ablation" and res["settings"]["steps"] == 2 and res["provenance"]["versions"]["torch"]
    assert res["settings"]["config"]["model.pretrained"] == cfg.model.pretrained and res["run_seconds"] > 0
    results_tables, results_render = load_script("tools/results_tables.py"), load_script("tools/results_render.py")
    headline = results_render.render_ablation_headline(res)
    assert "| twotone_ball | with, λ = 1 (n=1) |" in headline and "| twotone_ball | base model (n=1) |" in headline
    assert "2 steps per run, 2 class images" in headline and "all subjects" not in headline
    assert results_render.render_ablation(res).count("\n| twotone_ball |") == 3
    from dbtutor import load_config
    assert f"it was measured with 2 steps, the defaults now say {load_config().trainer.max_steps}" in \
        results_tables.stale("ablation", res)
    assert len(list((work / "reg" / "twotone_ball").glob("*.png"))) == 2
    run = json.loads((work / "runs" / "twotone_ball" / "prior_w1" / "seed0" / "eval.json").read_text())
    assert run["run"]["config"]["model.prior_loss_weight"] == 1.0
    assert run["run"]["config"]["model.with_prior_preservation"] is True

    def no_training(cfg):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(sys.modules["dbtutor.train"], "train", no_training)
    again = A.ablate(cfg, **kw)                                                 # everything is skipped
    assert again["table"] == out["table"]
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        A.ablate(cfg, **{**kw, "steps": 3})
    # a retrained base model at the same path is not mistaken for the old one
    import shutil
    monkeypatch.undo()                                                          # training allowed again
    model = tmp_path / "model"
    shutil.copytree(cfg.model.pretrained, model)
    cfg2 = tiny_config(**{"trainer.device": "cpu", "model.pretrained": str(model)})
    kw2 = {**kw, "work": tmp_path / "abl2", "weights": [1]}
    A.ablate(cfg2, **kw2)
    w = model / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\x00\x00\x00\x01")        # "retrained": other weights, same folder
    with pytest.raises(ConfigError, match=r"model.pretrained \(weights\)"):       # a finished run's record
        A.ablate(cfg2, **kw2)
    shutil.rmtree(tmp_path / "abl2" / "runs")                       # no runs left: the class folder's record speaks
    with pytest.raises(ConfigError, match=r"another base model.*or use another --work folder"):
        A.ablate(cfg2, **kw2)
    # an unreadable class-folder record is reported as unreadable, not as another model
    from dbtutor.regularization import PROVENANCE
    (tmp_path / "abl2" / "reg" / "twotone_ball" / PROVENANCE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"is unreadable.*or use another --work folder"):
        A.ablate(cfg2, **kw2)
