"""Every shipped family through the inference engine, with tiny checkpoints of each layout: an
SD 1.x inpainting model (9-channel UNet), SD 2.x 768 (v-prediction) and the SDXL refiner."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdpipe.contracts.inference import Img2ImgParams, Txt2ImgParams
from sdpipe_inference.engine import Engine, InvalidInput, ModelSpec
from sdpipe_local.tiny_models import config_folder_for, create_tiny_checkpoint

SIZE = {"width": 64, "height": 64, "steps": 3, "seed": 5}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSpec]:
    folder = tmp_path_factory.mktemp("families")
    specs = {}
    for family in ("sd1_inpainting", "sd2", "sdxl_refiner"):
        path = folder / f"tiny-{family}.safetensors"
        create_tiny_checkpoint(family, path, seed=3)  # type: ignore[arg-type]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        registered = "sd1" if family == "sd1_inpainting" else family
        specs[family] = ModelSpec(path.stem, digest, digest[:10], registered, path, config_folder_for(path))
    return specs


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", max_pipelines=3)


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient() -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    return Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=-1))


def left_half_mask() -> str:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255
    return b64_png(Image.fromarray(mask))


def test_an_inpainting_checkpoint_runs_txt2img_and_img2img_with_its_own_pipeline(engine, family_models):
    model = family_models["sd1_inpainting"]
    plain = engine.generate(Txt2ImgParams(prompt="a fox", **SIZE), model)
    again = engine.generate(Txt2ImgParams(prompt="a fox", **SIZE), model)
    assert plain.images[0].size == (64, 64) and plain.seeds == [5]
    assert np.array_equal(np.array(plain.images[0]), np.array(again.images[0]))
    pipeline, _ = engine.cache.get(model)
    assert type(pipeline).__name__ == "StableDiffusionInpaintPipeline"
    assert pipeline.unet.config.in_channels == 9

    image = b64_png(gradient())
    masked = engine.generate(Img2ImgParams(prompt="a fox", init_images=[image], mask=left_half_mask(), **SIZE), model)
    unmasked = engine.generate(Img2ImgParams(init_images=[image], denoising_strength=0.5, **SIZE), model)
    assert "Denoising strength: 0.5" in unmasked.infotexts[0]
    assert not np.array_equal(np.array(masked.images[0]), np.array(unmasked.images[0]))
    assert engine.cache.loads == 1  # one load served all four


def test_sd2_768_keeps_v_prediction_whatever_the_sampler(engine, family_models):
    model = family_models["sd2"]
    for sampler in ("Euler a", "DPM++ 2M", "DDIM"):
        result = engine.generate(Txt2ImgParams(prompt="a fox", sampler_name=sampler, **SIZE), model)
        assert result.images[0].size == (64, 64)
        pipeline, _ = engine.cache.get(model)
        assert pipeline.scheduler.config.prediction_type == "v_prediction", sampler


def test_the_sdxl_refiner_refines_and_inpaints_but_refuses_txt2img(engine, family_models):
    model = family_models["sdxl_refiner"]
    with pytest.raises(InvalidInput, match=r"SDXL refiner.*img2img"):
        engine.generate(Txt2ImgParams(prompt="a fox", **SIZE), model)
    image = b64_png(gradient())
    refined = engine.generate(Img2ImgParams(prompt="a fox", init_images=[image], denoising_strength=0.4, **SIZE), model)
    assert refined.images[0].size == (64, 64) and "Denoising strength: 0.4" in refined.infotexts[0]
    inpainted = engine.generate(Img2ImgParams(init_images=[image], mask=left_half_mask(), **SIZE), model)
    assert inpainted.images[0].size == (64, 64)
    pipeline, _ = engine.cache.get(model)
    assert type(pipeline).__name__ == "StableDiffusionXLImg2ImgPipeline" and pipeline.text_encoder is None


def test_a_config_describing_a_pipeline_sdpipe_does_not_run_is_a_clear_error(engine, family_models, tmp_path):
    model = family_models["sd2"]
    config = tmp_path / "odd.config"
    config.mkdir()
    (config / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    odd = ModelSpec(model.name, "00" * 32, "0000000000", model.family, Path(model.path), config)
    with pytest.raises(Exception, match="StableDiffusionUpscalePipeline, which sdpipe does not run") as raised:
        engine.generate(Txt2ImgParams(prompt="a fox", **SIZE), odd)
    assert getattr(raised.value, "code", None) == "MODEL_CONFIG_MISMATCH"
