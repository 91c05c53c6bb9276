"""The docs stay true to the code: the README's length, every config key documented with its default, results tables
made from result files, links that resolve, and no issue numbers or commit hashes outside the experiments log."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, load_script

RT = load_script("tools/results_tables.py")
RR = load_script("tools/results_render.py")

DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS, *sorted((ROOT / "data").rglob("README.md"))]


def test_the_readme_is_at_most_180_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 180


def flat_yaml(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from flat_yaml(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_configuration_md_gives_every_key_of_the_config_with_its_default():
    config = dict(flat_yaml(yaml.safe_load((ROOT / "configs" / "dreambooth.yaml").read_text())))
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \| (.+) \|$", text, re.M)
    documented = {key: default for key, default, _ in rows}
    assert len(documented) == len(rows), "a key is documented twice"
    assert sorted(documented) == sorted(config), "docs/configuration.md and configs/dreambooth.yaml list other keys"
    for key, value in config.items():
        if isinstance(value, str):
            value = value.replace("${root:}/", "")
        assert yaml.safe_load(documented[key]) == value, f"{key}: documented default {documented[key]}, yaml {value!r}"
    assert all(meaning.strip() for _, _, meaning in rows)


def test_the_results_tables_are_made_from_the_result_files():
    assert RT.check() == []


@pytest.fixture
def docs_copy(tmp_path):
    """A copy of the files tools/results_tables.py reads and writes, to change without touching the repository."""
    for rel in RT.FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "docs" / "results").mkdir(exist_ok=True)
    for f in (ROOT / "docs" / "results").glob("*.json"):
        shutil.copy(f, tmp_path / "docs" / "results" / f.name)
    for model in (RT.SHIPPED_MODEL, RT.SHIPPED_JUDGE):     # the weights the result files name (cards copied above)
        shutil.copytree(ROOT / model, tmp_path / model, ignore=shutil.ignore_patterns("README.md"), dirs_exist_ok=True)
    return tmp_path


def test_a_table_edited_by_hand_is_found_and_rerendering_restores_it(docs_copy):
    readme = docs_copy / "README.md"
    original = readme.read_text(encoding="utf-8")
    end = original.index("<!-- results: ablation-headline -->") + len("<!-- results: ablation-headline -->\n")
    readme.write_text(original[:end] + "| twotone_ball | with, λ = 1 | 0.99 |\n" + original[end:], encoding="utf-8")
    problems = RT.check(docs_copy)
    assert len(problems) == 1 and problems[0].startswith("README.md: a results table differs"), problems
    assert RT.rerender(docs_copy) == ["README.md"]
    assert readme.read_text(encoding="utf-8") == original and RT.check(docs_copy) == []


def test_an_unknown_or_unclosed_block_is_refused(docs_copy):
    path = docs_copy / "docs" / "results.md"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\n<!-- results: nonsense -->\nx\n<!-- /results -->\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="unknown results block 'nonsense'"):
        RT.check(docs_copy)
    path.write_text(text + "\n<!-- results: quality -->\nno end\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no '<!-- /results -->'"):
        RT.check(docs_copy)


def test_update_refuses_a_result_of_other_weights_or_a_quick_run(docs_copy, tmp_path):
    from dbtutor.models.model_source import model_fingerprint
    kept = docs_copy / "docs" / "results" / "quality.json"
    before = kept.read_bytes() if kept.exists() else None
    result = {"kind": "quality", "settings": {"model": RT.SHIPPED_MODEL, "model_fingerprint": "0" * 16}}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="measured on other weights than data/models/toyworld"):
        RT.update("quality", path, docs_copy)
    result["settings"]["model_fingerprint"] = model_fingerprint(ROOT / RT.SHIPPED_MODEL)
    result["settings"]["quick"] = True
    path.write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="made with --quick"):
        RT.update("quality", path, docs_copy)
    with pytest.raises(SystemExit, match="holds a 'quality' result, not 'ablation'"):
        RT.update("ablation", path, docs_copy)
    with pytest.raises(SystemExit, match="not found: run `python -m dbtutor.toyworld.quality` first"):
        RT.update("quality", tmp_path / "missing.json", docs_copy)
    assert (kept.read_bytes() if kept.exists() else None) == before      # a refused result replaces nothing


def test_an_ablation_measured_on_other_defaults_is_stale():
    from dbtutor import load_config
    from dbtutor.commands.ablate import flat_config
    settings = {"config": flat_config(load_config()), "steps": load_config().trainer.max_steps,
                "num_reg_images": load_config().model.data.num_reg_images, "pretrained": "elsewhere"}
    assert RT.stale("ablation", {"kind": "ablation", "settings": settings}) == []
    changed = {**settings, "config": {**settings["config"], "model.train_text_encoder": True}}
    assert RT.stale("ablation", {"kind": "ablation", "settings": changed}) == [
        "it was measured with model.train_text_encoder=True, the defaults now say False"]
    fewer = {**settings, "steps": 100, "config": {**settings["config"], "output_dir": "/somewhere/else"}}
    assert RT.stale("ablation", {"kind": "ablation", "settings": fewer}) == [
        f"it was measured with 100 steps, the defaults now say {settings['steps']}"]


@pytest.mark.parametrize("folder, pipeline_tag", [("toyworld", "text-to-image"),
                                                  ("toyworld-judge", "image-classification")])
def test_the_model_cards_follow_hugging_faces_template(folder, pipeline_tag):
    text = (ROOT / "data" / "models" / folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "mit" and meta["pipeline_tag"] == pipeline_tag and meta["tags"]
    if folder == "toyworld":
        assert meta["library_name"] == "diffusers"
        for section in ("Model details", "Uses", "Training data", "Training procedure", "Evaluation", "Limitations",
                        "How to reproduce"):
            assert f"\n## {section}\n" in text, section
        assert "**Out of scope:**" in text and "<!-- results: quality -->" in text


def test_links_between_the_docs_resolve():
    for md in MARKDOWN:
        text = md.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{md.relative_to(ROOT)} links to {target}, which does not exist"


ISSUE = re.compile(r"\bissues? ?#?\d+", re.I)
HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")


def scanned():
    """Everything a reader or a maintainer reads as the project's current state; docs/experiments.md is the log."""
    files = [p for p in MARKDOWN if p.name != "experiments.md"] + sorted((ROOT / "configs").glob("*.yaml"))
    for folder in ("dbtutor", "tests", "bench", "tools"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files + sorted((ROOT / "notebooks").glob("*.py")) + [ROOT / "pyproject.toml", ROOT / ".ci" / "run"]


def test_no_issue_numbers_or_commit_hashes_outside_the_experiments_log():
    found = []
    for path in scanned():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {m.group()}"
                      for m in (*ISSUE.finditer(line), *HASH.finditer(line))]
    assert found == []


@pytest.mark.slow
def test_the_quality_command_writes_what_the_tables_are_made_from(tiny_pipeline_dir, tmp_path, capsys):
    from dbtutor.models.model_source import model_fingerprint
    from dbtutor.toyworld import judge as J
    from dbtutor.toyworld.quality import main
    J.save_judge(J.Judge(), tmp_path / "judge")
    main(["--model", str(tiny_pipeline_dir), "--judge", str(tmp_path / "judge"), "--steps", "1",
          "--out", str(tmp_path / "quality")])
    res = json.loads((tmp_path / "quality" / "quality.json").read_text())
    assert res["kind"] == "quality" and res["n_images"] == 312 and res["provenance"]["versions"]["torch"]
    assert res["settings"]["model_fingerprint"] == model_fingerprint(tiny_pipeline_dir)
    table = RR.render_quality(res)
    assert table.startswith("| measure | value | target |") and "312 images judged (1 DPM-Solver++ steps" in table
    assert f"| {res['object']:.3f} |" in table
    assert f"`python -m dbtutor.toyworld.quality --model {tiny_pipeline_dir} --judge {tmp_path / 'judge'} --steps 1`" \
        in table                                       # the command that made it, with the options it was given
    assert RT.stale("quality", res) == []              # another model than the shipped one: nothing to compare with


@pytest.mark.slow
def test_lora_vs_full_writes_what_the_tables_are_made_from(tiny_pipeline_dir, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "lora_vs_full.py"), "--quick", "--steps", "3",
                          "--model", str(tiny_pipeline_dir), "--work", str(tmp_path / "work"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["kind"] == "lora_vs_full" and res["settings"]["quick"] and [r["variant"] for r in res["rows"]] == [
        "full", "LoRA r=4"]
    table = RR.render_lora(res)
    assert table.startswith((tmp_path / "out" / "results.md").read_text().strip())    # the table the command printed
    assert "3 training steps per variant" in table and f"`python bench/lora_vs_full.py --model {tiny_pipeline_dir} " \
        "--steps 3`" in table
    assert RT.stale("lora_vs_full", res)[0] == ("it was made with --quick (its numbers check the machinery and mean "
                                                "nothing)")


def test_the_gpu_memory_table_is_what_dbtutor_memory_prints():
    """docs/gpu.md shows `python -m dbtutor.models.memory`'s table as the code makes it now (estimates change with it)."""
    from dbtutor.models.memory import table
    assert table() in (ROOT / "docs" / "gpu.md").read_text(encoding="utf-8"), \
        "docs/gpu.md: paste the table `python -m dbtutor.models.memory` prints"
