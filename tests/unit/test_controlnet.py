"""ControlNet units: the extension's API fields, and the control maps sdpipe makes from them."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from sdpipe.contracts.inference import Img2ImgParams, Txt2ImgParams
from sdpipe_inference.controlnet import canny, control_map, fit


def units(*args):
    return {"prompt": "x", "alwayson_scripts": {"controlnet": {"args": list(args)}}}


def test_enabled_units_with_the_extensions_names_and_indices():
    body = units(
        {"module": "canny", "model": "canny [abc]", "image": "aGk=", "resize_mode": 0},
        {"enabled": False, "module": "depth_midas"},  # a disabled unit is skipped, whatever it holds
        {"module": "None", "model": "lineart", "image": {"image": "aGk=", "mask": None}},
    )
    body["alwayson_scripts"]["ADetailer"] = {"args": [True]}
    params = Txt2ImgParams.model_validate(body)
    first, second = params.controlnet_units
    assert (first.module, first.resize_mode, first.thresholds) == ("canny", "Just Resize", (100.0, 200.0))
    assert (second.module, second.control_image) == ("none", "aGk=")
    assert params.warnings() == ["alwayson_scripts.ADetailer is not run by sdpipe; it was ignored"]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ({"module": "openpose", "model": "x", "image": "aGk="}, "args[0].module: 'openpose' is not a preprocessor"),
        ({"module": "canny", "image": "aGk="}, "args[0]: model is required"),
        ({"model": "x"}, "args[0].image is required for txt2img"),
        ({"model": "x", "image": "aGk=", "weight": 3}, "args[0].weight: Input should be less than or equal to 2"),
        ({"model": "x", "image": "aGk=", "resize_mode": "Stretch"}, "args[0].resize_mode: 'Stretch' is not one of"),
        ({"model": "x", "image": "aGk=", "control_mode": 1}, "'My prompt is more important' is not supported"),
        ({"model": "x", "image": "aGk=", "guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start 0.8 is after"),
        ("canny", "args[0] must be an object"),
    ],
)
def test_a_bad_unit_names_its_index_and_field(arg, message):
    with pytest.raises(ValidationError) as failed:
        Txt2ImgParams.model_validate(units(arg))
    assert message in str(failed.value)


def test_unit_limits_and_agreement():
    good = {"model": "x", "image": "aGk="}
    with pytest.raises(ValidationError, match="4 enabled units, at most 3"):
        Txt2ImgParams.model_validate(units(*[good] * 4))
    with pytest.raises(ValidationError, match="must use the same control_mode"):
        Txt2ImgParams.model_validate(units(good, good | {"control_mode": "ControlNet is more important"}))
    with pytest.raises(ValidationError, match="must be a list"):
        Txt2ImgParams.model_validate({"prompt": "x", "alwayson_scripts": {"controlnet": {"args": "x"}}})
    # img2img may leave the image out: the unit then uses the init image.
    img2img = Img2ImgParams.model_validate(units({"model": "x"}) | {"init_images": ["aGk="]})
    assert img2img.controlnet_units[0].control_image is None


def square(size=(64, 64), box=(16, 16, 47, 47)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle(box, fill="black")
    return image


def test_canny_finds_the_outline_and_nothing_else():
    edges = np.asarray(canny(square(), 100, 200))[:, :, 0] > 0
    assert edges.shape == (64, 64)
    ys, xs = np.nonzero(edges)
    assert ys.min() >= 14 and ys.max() <= 49 and xs.min() >= 14 and xs.max() <= 49  # around the square
    assert not edges[24:40, 24:40].any() and not edges[:10].any()  # nothing inside, nothing far outside
    assert edges[16:48, 15:18].any(axis=1).all()  # the left side is one unbroken line
    # Thresholds above the strongest gradient leave no edges at all.
    assert not np.asarray(canny(square(), 5000, 6000)).any()


def test_resize_modes_map_the_control_image_onto_the_output():
    wide = square((128, 64), (0, 0, 63, 63))  # black left half, white right half
    stretched = np.asarray(fit(wide, (64, 64), "Just Resize"))
    cropped = np.asarray(fit(wide, (64, 64), "Crop and Resize"))
    filled = np.asarray(fit(wide, (64, 64), "Resize and Fill"))
    assert stretched.shape == cropped.shape == filled.shape == (64, 64, 3)
    assert stretched[:, :30].max() < 30 and stretched[:, 34:].min() > 225
    # Cropping keeps the centre 64x64: black left of the middle, white right of it.
    assert cropped[:, :30].max() < 30 and cropped[:, 34:].min() > 225
    # Filling fits the whole image in (64x32) and pads the rest with black.
    assert filled[:14].max() == 0 and filled[50:].max() == 0 and filled[20:44, 40:].min() > 225


def test_pixel_perfect_preprocesses_at_the_output_size():
    from sdpipe.contracts.inference import ControlNetUnit

    unit = ControlNetUnit(model="x", module="canny", pixel_perfect=True)
    assert control_map(unit, square((32, 32), (8, 8, 23, 23)), (64, 64)).size == (64, 64)
    inverted = control_map(ControlNetUnit(model="x", module="invert"), square(), (64, 64))
    assert np.asarray(inverted)[30, 30].tolist() == [255, 255, 255]
