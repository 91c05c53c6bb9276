"""Class images: exactly num_reg_images, nothing when already full, seeded and resumable."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbtutor import generate_regularization, load_pipeline
from dbtutor.regularization import count_images


def test_fills_to_exactly_num_reg_images_and_rerun_generates_none(tiny_config):
    cfg = tiny_config(**{"model.data.num_reg_images": 7, "model.data.num_images_per_prompt": 3})
    written = generate_regularization(cfg, progress=False)
    assert len(written) == 7 and count_images(cfg.model.data.regularization_dir) == 7   # NeMo would make 9
    assert generate_regularization(cfg, progress=False) == []


def test_counts_existing_images_and_is_reproducible(tiny_config, tiny_pipeline_dir):
    cfg = tiny_config(**{"model.data.num_reg_images": 5})
    folder = Path(cfg.model.data.regularization_dir)
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "my_own_dog.jpg")
    pipe = load_pipeline(str(tiny_pipeline_dir))
    first = generate_regularization(cfg, pipe, progress=False)
    assert len(first) == 4 and count_images(folder) == 5
    kept = np.asarray(Image.open(first[2]))
    for p in first[2:]:                      # an interrupted run: the last images never got written
        p.unlink()
    again = generate_regularization(cfg, pipe, progress=False)
    assert [p.name for p in again] == [p.name for p in first[2:]]
    assert np.array_equal(np.asarray(Image.open(again[0])), kept)    # same index, same seed, same image


def test_ranks_split_the_work_without_duplicates(tiny_config, tiny_pipeline_dir):
    cfg = tiny_config(**{"model.data.num_reg_images": 5})
    pipe = load_pipeline(str(tiny_pipeline_dir))
    a = generate_regularization(cfg, pipe, rank=0, world_size=2, progress=False)
    assert len(a) == 3
    b = generate_regularization(cfg, pipe, rank=1, world_size=2, progress=False)
    assert len(b) <= 2 and count_images(cfg.model.data.regularization_dir) <= 5


@pytest.mark.slow
def test_class_images_of_another_model_or_prompt_are_refused_not_reused(tiny_config, tiny_pipeline_dir, tmp_path):
    import shutil
    import subprocess
    import sys

    import pytest
    from safetensors.torch import load_file, save_file

    from dbtutor.core.errors import DataError
    from dbtutor.regularization import PROVENANCE
    def config(**kw):
        return tiny_config(**{"model.data.num_reg_images": 2, **kw})
    cfg = config()
    folder = Path(cfg.model.data.regularization_dir)
    assert len(generate_regularization(cfg, progress=False)) == 2 and (folder / PROVENANCE).exists()
    moved = tmp_path / "same_weights_elsewhere"                   # the same weights at another path are fine
    shutil.copytree(tiny_pipeline_dir, moved)
    assert generate_regularization(config(**{"model.pretrained": str(moved)}), progress=False) == []
    unet = moved / "unet" / "diffusion_pytorch_model.safetensors"   # now retrain it: one weight changes
    w = load_file(unet)
    k = sorted(w)[0]
    w[k] = w[k] + 1
    save_file(w, unet)
    with pytest.raises(DataError, match=r"regularization_dir .*another base model.*delete the folder"):
        generate_regularization(config(**{"model.pretrained": str(moved)}), progress=False)
    with pytest.raises(DataError, match="another prompt"):
        generate_regularization(config(**{"model.data.regularization_prompt": "a photo of a box"}), progress=False)
    assert count_images(folder) == 2                                # nothing lost
    r = subprocess.run([sys.executable, "-m", "dbtutor", "generate-reg", f"model.pretrained={moved}",
                        f"model.data.regularization_dir={folder}", "model.data.num_reg_images=2"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len((r.stderr + r.stdout).strip().splitlines()) == 1 and "another base model" in r.stderr + r.stdout
    (folder / PROVENANCE).write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        generate_regularization(cfg, progress=False)
    (folder / PROVENANCE).unlink()                                  # no record: used as NeMo would (counted)
    assert generate_regularization(config(**{"model.pretrained": str(moved)}), progress=False) == []
