"""Loading a pipeline in float32, every weight checked (one line when some would be random); switching its sampler."""
import shutil

import pytest
import torch
import transformers

from conftest import TOKENIZER
from dbtutor.core.errors import ConfigError
from dbtutor.models.pipeline import load_pipeline, set_scheduler


def test_every_sampler_loads_and_ddim_never_clips_latents(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir)
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in pipe.unet.parameters())
    set_scheduler(pipe, "ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.clip_sample is False          # DDIM's own default (True) would clip latents to [-1, 1]
    set_scheduler(pipe, "dpm")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ConfigError, match="model.sampling.scheduler=nope"):
        set_scheduler(pipe, "nope")


TE_FILE = "text_encoder/model.safetensors"
SLOW = ("vocab.json", "merges.txt")                     # the files transformers 4's CLIPTokenizer reads


def copy_with_text_encoder_keys(src, dest, rename):
    """A copy of a pipeline folder whose text encoder's keys are renamed by `rename` (None drops a key)."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dest)
    state = load_file(str(dest / TE_FILE))
    save_file({rename(k): v for k, v in state.items() if rename(k)}, str(dest / TE_FILE), metadata={"format": "pt"})
    return len(state)


def encode(pipe):
    ids = pipe.tokenizer(["a photo of sks ball"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_a_text_encoder_with_renamed_keys_is_refused_in_one_line(tiny_pipeline_dir, tmp_path):
    n = copy_with_text_encoder_keys(tiny_pipeline_dir, tmp_path / "odd", lambda k: "renamed." + k)
    with pytest.raises(ConfigError) as e:
        load_pipeline(str(tmp_path / "odd"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'odd'}: text_encoder would load with random weights")
    assert f"({n} missing, {n} in the file unused, 0 of the wrong shape" in msg
    assert msg.endswith("the file does not fit CLIPTextModel: replace text_encoder/ with a complete copy of that part")
    config = tmp_path / "odd" / "text_encoder" / "config.json"                     # written by another version
    config.write_text(config.read_text().replace(transformers.__version__, "4.99.0"))
    with pytest.raises(ConfigError, match=r"it was saved by transformers 4\.99\.0: load it with that version "
                                          r"\(pip install 'transformers==4\.99\.0'\)$"):
        load_pipeline(str(tmp_path / "odd"))


def test_a_unet_weight_renamed_is_refused(tiny_pipeline_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    shutil.copytree(tiny_pipeline_dir, tmp_path / "odd")
    f = tmp_path / "odd" / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state["renamed.conv_in.bias"] = state.pop("conv_in.bias")
    save_file(state, str(f), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r": unet would load with random weights \(1 missing, 1 in the file unused, "
                                          r"0 of the wrong shape, e\.g\. conv_in\.bias\); the file does not fit "
                                          r"UNet2DConditionModel: replace unet/ with a complete copy of that part$"):
        load_pipeline(str(tmp_path / "odd"))


@pytest.mark.slow
@pytest.mark.versions
def test_a_folder_saved_by_transformers_5_is_fixed_into_one_every_version_reads(tiny_pipeline_dir, tmp_path, capsys):
    """transformers 5 saves the text encoder's keys without text_model. and the tokenizer as tokenizer.json alone:
    transformers 4 cannot read either and says what to run; after `dbtutor fix-layout` every version loads the
    folder, with the same tokens and text encoder outputs."""
    from safetensors import safe_open
    from dbtutor.commands.cli import main
    v5 = tmp_path / "v5"
    copy_with_text_encoder_keys(tiny_pipeline_dir, v5, lambda k: k.removeprefix("text_model."))
    shutil.rmtree(v5 / "tokenizer")
    (v5 / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):                # what transformers 5 writes
        shutil.copy(TOKENIZER / name, v5 / "tokenizer" / name)
    if int(transformers.__version__.split(".")[0]) < 5:
        with pytest.raises(ConfigError, match=rf"^{v5}: tokenizer/ holds only tokenizer.json \(saved by transformers "
                                              rf"5\), .* run `dbtutor fix-layout {v5}` once"):
            load_pipeline(str(v5))
        for name in SLOW:                                                    # the text encoder's own message
            shutil.copy(TOKENIZER / name, v5 / "tokenizer" / name)
        with pytest.raises(ConfigError, match=r"key layout of transformers 5, which transformers 4\.\S+ cannot read: "
                                              rf"run `dbtutor fix-layout {v5}` once"):
            load_pipeline(str(v5))
        for name in SLOW:
            (v5 / "tokenizer" / name).unlink()
    else:
        load_pipeline(str(v5))
    assert main(["fix-layout", str(v5)]) == 0
    assert capsys.readouterr().out.startswith(f"{v5}: text_encoder and tokenizer rewritten in Stable Diffusion's")
    with safe_open(str(v5 / TE_FILE), framework="pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys()) and f.metadata() == {"format": "pt"}
    for name in SLOW:
        assert (v5 / "tokenizer" / name).read_bytes() == (TOKENIZER / name).read_bytes()     # CLIP's own files
    assert torch.equal(encode(load_pipeline(str(v5))), encode(load_pipeline(str(tiny_pipeline_dir))))
    assert main(["fix-layout", str(v5)]) == 0                                 # a second run changes nothing
    assert capsys.readouterr().out.startswith(f"{v5}: already in Stable Diffusion's layout")
    assert main(["fix-layout", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == (f"dbtutor: error: {tmp_path / 'nothing'}: no model_index.json; give a "
                                       "diffusers Stable Diffusion pipeline folder\n")


def test_stable_diffusions_own_layout_with_its_old_position_ids_loads(tiny_pipeline_dir, tmp_path):
    """SD v1.5's text encoder file also holds text_model.embeddings.position_ids (a buffer, not a weight)."""
    from safetensors.torch import load_file, save_file
    sd = tmp_path / "sd"
    copy_with_text_encoder_keys(tiny_pipeline_dir, sd, lambda k: "text_model." + k.removeprefix("text_model."))
    state = load_file(str(sd / TE_FILE))
    state["text_model.embeddings.position_ids"] = torch.arange(32)[None]
    save_file(state, str(sd / TE_FILE), metadata={"format": "pt"})
    assert torch.equal(encode(load_pipeline(str(sd))), encode(load_pipeline(str(tiny_pipeline_dir))))


def test_text_shift_and_text_moved_measure_the_text_encoders_output(tiny_pipeline_dir):
    from dbtutor.models.pipeline import text_moved, text_shift
    base, tuned = load_pipeline(tiny_pipeline_dir), load_pipeline(tiny_pipeline_dir)
    same, sks = text_shift(base, "a photo of a ball", ["a photo of a ball", "a photo of sks ball"])
    assert same == 0 and sks > 0
    sks_id = base.tokenizer("sks", add_special_tokens=False).input_ids
    with torch.no_grad():                                   # "training" that touched only the identifier's row
        w = tuned.text_encoder.get_input_embeddings().weight
        w[sks_id] += torch.randn(w[sks_id].shape, generator=torch.Generator().manual_seed(0))
    ball, ident = text_moved(base, tuned, ["a photo of a ball", "a photo of sks ball"])
    assert ball == 0 and ident > 0.01
    assert text_moved(base, base, "a photo of sks ball") == [0.0]
