"""Loading a pipeline in float32 and switching its sampler."""
import pytest

from dbtutor.errors import ConfigError
from dbtutor.pipeline import load_pipeline, set_scheduler


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
