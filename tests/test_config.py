"""Config: NeMo's keys, dotted overrides, unknown keys refused with a suggestion, values checked."""
import pytest

from dbtutor import ConfigError, load_config

NEMO_KEYS = ["model.pretrained", "model.with_prior_preservation", "model.prior_loss_weight", "model.train_text_encoder",
             "model.use_cached_latents", "model.data.instance_dir", "model.data.instance_prompt",
             "model.data.regularization_dir", "model.data.regularization_prompt", "model.data.num_reg_images",
             "model.data.num_images_per_prompt", "model.data.resolution", "model.data.center_crop",
             "model.data.cached_instance_dir", "model.data.cached_reg_dir", "model.data.num_workers", "optim.lr",
             "trainer.max_steps", "trainer.precision", "trainer.seed", "output_dir", "model.gradient_checkpointing",
             "model.channels_last", "model.compile", "model.attention"]


def test_default_config_has_nemo_keys():
    from omegaconf import OmegaConf
    cfg = load_config()
    for key in NEMO_KEYS:
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key
    assert cfg.model.data.instance_dir.endswith("data/subjects/twotone_ball")


def test_overrides_and_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  prior_loss_weight: 0.25\n  data:\n    instance_prompt: a photo of sks dog\n")
    cfg = load_config(f, ["trainer.max_steps=7", "trainer.precision=bf16", "model.data.center_crop=false",
                          "model.use_cached_latents=false"])
    assert cfg.model.prior_loss_weight == 0.25 and cfg.model.data.instance_prompt == "a photo of sks dog"
    assert cfg.trainer.max_steps == 7 and cfg.trainer.precision == "bf16" and cfg.model.data.center_crop is False


@pytest.mark.parametrize("override,expected", [
    ("model.prior_los_weight=1", "did you mean 'model.prior_loss_weight'"),
    ("prior_loss_weight=1", "did you mean 'model.prior_loss_weight'"),
    ("model.data.instance_directory=x", "did you mean 'model.data.instance_dir'"),
    ("trainer.max_step=3", "did you mean 'trainer.max_steps'"),
])
def test_unknown_key_suggests_nearest(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(overrides=[override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  with_prior_preservaton: true\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*with_prior_preservation"):
        load_config(f)


@pytest.mark.parametrize("override,expected", [
    ("model.data.resolution=60", "multiple of 8"),
    ("trainer.precision=8", "trainer.precision"),
    ("model.data.regularization_prompt=null", "regularization_prompt"),
    ("model.data.regularization_dir=", "regularization_dir"),
    ("model.prior_loss_weight=-1", "prior_loss_weight"),
    ("trainer.max_steps=ten", "trainer.max_steps"),
    ("model.data.center_crop=false", "center_crop"),
    ("nonsense", "key=value"),
    ("trainer.keep_checkpoints=last", "trainer.keep_checkpoints=last must be true or false"),
    ("optim.use_8bit_adam=yes please", "optim.use_8bit_adam=yes please must be true or false"),
    ("trainer.wait_for_lock=-5", "trainer.wait_for_lock=-5 must be false"),
    ("trainer.wait_for_lock=soon", "trainer.wait_for_lock=soon must be false"),
    ("trainer.validation.every=-1", r"trainer.validation.every=-1 must be a whole number >= 0"),
    ("trainer.validation.num_images=0", r"trainer.validation.num_images=0 must be a whole number >= 1"),
    ("trainer.validation.prompts=[]", r"trainer.validation.prompts=\[\] must be a list of prompts"),
    ("trainer.validation.prompts=[a photo, 3]", "trainer.validation.prompts=.* must be a list of prompts"),
    ("trainer.log_with=mlflow", "trainer.log_with=mlflow is not one of tensorboard, wandb, null"),
])
def test_bad_values_are_one_clear_line(override, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(overrides=[override])
    assert "\n" not in str(e.value)


def test_one_folder_for_both_latent_caches_is_refused(tmp_path):
    same = [f"model.data.cached_instance_dir={tmp_path}/c", f"model.data.cached_reg_dir={tmp_path}/./c"]
    with pytest.raises(ConfigError, match="cached_instance_dir and model.data.cached_reg_dir"):
        load_config(overrides=same)
    load_config(overrides=[same[0], f"model.data.cached_reg_dir={tmp_path}/r"])


def test_without_prior_preservation_needs_no_reg_settings():
    cfg = load_config(overrides=["model.with_prior_preservation=false", "model.data.regularization_prompt=null",
                                 "model.data.regularization_dir=null"])
    assert cfg.model.with_prior_preservation is False


def test_yaml_value_never_executes_code(tmp_path):
    cfg = load_config(overrides=["model.data.instance_prompt=!!python/object/apply:os.system ['echo hacked']"])
    assert isinstance(cfg.model.data.instance_prompt, str)


def test_scientific_notation_without_a_dot_is_a_number():
    cfg = load_config(overrides=["optim.lr=2e-4", "model.prior_loss_weight=5E-1"])
    assert cfg.optim.lr == 2e-4 and cfg.model.prior_loss_weight == 0.5
    assert load_config(overrides=["model.data.instance_prompt=a photo of sks ball"]).model.data.instance_prompt \
        == "a photo of sks ball"


def test_validation_and_log_with_defaults_and_spellings():
    cfg = load_config()
    assert cfg.trainer.validation.prompts is None and cfg.trainer.log_with is None     # prompts follow the data keys
    cfg = load_config(overrides=["trainer.log_with=none", "trainer.validation.prompts=a photo of sks ball"])
    assert cfg.trainer.log_with is None and list(cfg.trainer.validation.prompts) == ["a photo of sks ball"]
