import pytest
from pydantic import ValidationError

from sdpipe.contracts.inference import Img2ImgParams, Txt2ImgParams


def test_a1111_defaults_and_combined_sampler_names():
    params = Txt2ImgParams.model_validate({"prompt": "a fox", "sampler_name": "DPM++ 2M Karras"})
    assert (params.sampler_name, params.scheduler) == ("DPM++ 2M", "Karras")
    assert (params.steps, params.cfg_scale, params.width, params.height, params.seed) == (20, 7.0, 512, 512, -1)


def test_model_shortcut_and_override_settings():
    params = Txt2ImgParams.model_validate(
        {"prompt": "x", "override_settings": {"sd_model_checkpoint": "a [0123456789]", "CLIP_stop_at_last_layers": 2}}
    )
    assert (params.checkpoint, params.clip_skip) == ("a [0123456789]", 2)
    assert Txt2ImgParams.model_validate({"prompt": "x", "model": "b"}).checkpoint == "b"


def test_unknown_fields_are_warnings_not_errors():
    params = Txt2ImgParams.model_validate({"prompt": "x", "my_extension_field": 1, "save_images": True})
    assert params.warnings() == [
        "field 'my_extension_field' is not an AUTOMATIC1111 field sdpipe knows; it was ignored"
    ]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"prompt": "x", "width": 500}, "width", "multiple of 8"),
        ({"prompt": "x", "height": 4096}, "height", "less than or equal to 2048"),
        ({"prompt": "x", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"prompt": "x", "steps": 151}, "steps", "less than or equal to 150"),
        ({"prompt": "x", "batch_size": 9}, "batch_size", "less than or equal to 8"),
        ({"prompt": "x", "cfg_scale": 0.5}, "cfg_scale", "greater than or equal to 1"),
        ({"prompt": "x", "sampler_name": "Euler b"}, "", "sampler_name 'Euler b' is not a known sampler"),
        ({"prompt": "x", "scheduler": "Cosine"}, "", "scheduler 'Cosine' is not a known schedule type"),
        ({"prompt": "x", "enable_hr": True}, "", "enable_hr=True is not supported"),
        ({"prompt": "x", "restore_faces": True}, "", "restore_faces=True is not supported"),
        ({"prompt": "   "}, "", "prompt is required for txt2img"),
        ({"prompt": "x", "seed": -2}, "seed", "greater than or equal to -1"),
        ({"prompt": "x", "sampler_name": "PLMS", "steps": 3}, "", "steps=3 is too few for PLMS"),
    ],
)
def test_bad_txt2img_input_names_the_field(body, field, message):
    with pytest.raises(ValidationError) as failed:
        Txt2ImgParams.model_validate(body)
    error = failed.value.errors()[0]
    assert field in ".".join(str(p) for p in error["loc"])
    assert message in error["msg"]


def test_img2img_needs_one_init_image_and_a_strength_in_range():
    with pytest.raises(ValidationError, match="init_images"):
        Img2ImgParams.model_validate({"prompt": "x"})
    with pytest.raises(ValidationError, match="denoising_strength"):
        Img2ImgParams.model_validate({"prompt": "x", "init_images": ["aGk="], "denoising_strength": 1.5})
    assert Img2ImgParams.model_validate({"init_images": ["aGk="]}).prompt == ""  # A1111 allows no prompt here


def test_img2img_that_would_run_no_denoising_step_is_refused_with_what_to_change():
    with pytest.raises(ValidationError, match=r"0.3 of 3 steps leaves no step to run: raise steps to at least 4"):
        Img2ImgParams.model_validate({"init_images": ["aGk="], "steps": 3, "denoising_strength": 0.3})
    with pytest.raises(ValidationError, match="denoising_strength 0 would change nothing"):
        Img2ImgParams.model_validate({"init_images": ["aGk="], "denoising_strength": 0})
    assert Img2ImgParams.model_validate({"init_images": ["aGk="], "steps": 4, "denoising_strength": 0.3}).steps == 4
