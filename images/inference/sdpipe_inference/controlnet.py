"""ControlNet units as the sd-webui-controlnet extension runs them: load the model, make the control map.

ControlNet files come in two layouts, both loaded offline with no config file:

- the original ("LDM") layout the WebUI uses (``control_v11p_sd15_canny.pth``: ``control_model.*``
  or bare ``input_blocks``/``zero_convs``/``input_hint_block`` names), converted with diffusers'
  own converter;
- the diffusers layout (``controlnet_cond_embedding.*``), loaded as is.

The architecture is the checkpoint UNet's encoder half, so the ControlNet's config is derived
from the UNet it will run with; only the conditioning embedding's widths come from the file.
A file that does not fit (an SDXL ControlNet on an SD1.5 checkpoint) is a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdpipe.contracts.inference import ControlNetUnit
from sdpipe_inference.weights import read_state_dict

_LDM_PREFIX = "control_model."


class ControlNetMismatch(ValueError):
    """The file is not a ControlNet for this checkpoint's architecture."""


def _embedding_widths(convs: list[Any]) -> tuple[tuple[int, ...], int]:
    """Conditioning-embedding widths and input channels from its convs in order (conv_in, blocks...).

    Each width after the first is set by the second conv of a pair (``blocks[2i+1]``), as in
    diffusers' ``ControlNetConditioningEmbedding``.
    """
    if not convs:
        raise ControlNetMismatch("no conditioning embedding (input_hint_block) in the file")
    widths = [int(convs[0].shape[0])] + [int(conv.shape[0]) for conv in convs[2::2]]
    return tuple(widths), int(convs[0].shape[1])


def load_controlnet(path: Path, unet: Any, dtype: Any, device: str) -> Any:
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    try:
        state = read_state_dict(path)
    except ValueError as exc:
        raise ControlNetMismatch(str(exc)) from None
    if any(key.startswith("controlnet_cond_embedding.") for key in state):
        blocks = sorted(
            (key for key in state if key.startswith("controlnet_cond_embedding.blocks.") and key.endswith(".weight")),
            key=lambda key: int(key.split(".")[2]),
        )
        widths, channels = _embedding_widths(
            [state["controlnet_cond_embedding.conv_in.weight"], *(state[key] for key in blocks)]
        )
        layout = "diffusers"
    else:
        state = {key.removeprefix(_LDM_PREFIX): value for key, value in state.items()}
        hints = sorted(
            (key for key in state if key.startswith("input_hint_block.") and key.endswith(".weight")),
            key=lambda key: int(key.split(".")[1]),
        )
        widths, channels = _embedding_widths([state[key] for key in hints[:-1]])  # the last is conv_out
        layout = "ldm"
    model = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=widths, load_weights_from_unet=False, conditioning_channels=channels
    )
    if layout == "ldm":
        # diffusers' converter leaves SDXL's size/crop embedding (``label_emb``) out; rename it here.
        renames = {"label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2."}
        extra = {renames[key[:14]] + key[14:]: value for key, value in state.items() if key[:14] in renames}
        state = convert_controlnet_checkpoint(state, dict(model.config)) | extra
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ControlNetMismatch(lines[0] if lines else str(exc)[:300]) from None
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ControlNetMismatch(
            f"{len(missing)} tensors missing and {len(unexpected)} unexpected for this UNet (e.g. {example})"
        )
    if model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval()


# ---------------------------------------------------------------------- control maps
def fit(image: Image.Image, size: tuple[int, int], resize_mode: str) -> Image.Image:
    """The extension's resize modes, mapping the control image onto the output size."""
    width, height = size
    if resize_mode == "Just Resize":
        return image.resize(size, Image.Resampling.LANCZOS)
    cover = resize_mode == "Crop and Resize"
    scale = (max if cover else min)(width / image.width, height / image.height)
    scaled = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    canvas = Image.new("RGB", size)  # "Resize and Fill" pads with black: no control signal there
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def canny(image: Image.Image, low: float, high: float) -> Image.Image:
    """Canny edges as OpenCV's ``cv2.Canny(img, low, high)`` computes them (3x3 Sobel, L1 norm).

    White edges on black, three channels, like the extension's canny preprocessor.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name

    gray = np.asarray(image.convert("L"), dtype=np.float32)
    padded = np.pad(gray, 1, mode="reflect")
    gx = (padded[:-2, 2:] + 2 * padded[1:-1, 2:] + padded[2:, 2:]) - (
        padded[:-2, :-2] + 2 * padded[1:-1, :-2] + padded[2:, :-2]
    )
    gy = (padded[2:, :-2] + 2 * padded[2:, 1:-1] + padded[2:, 2:]) - (
        padded[:-2, :-2] + 2 * padded[:-2, 1:-1] + padded[:-2, 2:]
    )
    magnitude = np.abs(gx) + np.abs(gy)
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    height, width = magnitude.shape
    around = np.pad(magnitude, 1)

    def neighbour(dy: int, dx: int) -> np.ndarray:
        return around[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    # Non-maximum suppression along the gradient, quantised to 0/45/90/135 degrees.
    directions = [
        ((angle < 22.5) | (angle >= 157.5), (0, -1), (0, 1)),
        ((angle >= 22.5) & (angle < 67.5), (-1, -1), (1, 1)),
        ((angle >= 67.5) & (angle < 112.5), (-1, 0), (1, 0)),
        ((angle >= 112.5) & (angle < 157.5), (-1, 1), (1, -1)),
    ]
    peak = np.zeros_like(magnitude, dtype=bool)
    for selected, before, after in directions:
        peak |= selected & (magnitude > neighbour(*before)) & (magnitude >= neighbour(*after))
    weak = torch.from_numpy(peak & (magnitude > low))[None, None].float()
    edges = torch.from_numpy(peak & (magnitude > high))[None, None].float()
    # Hysteresis: weak edges connected (8-neighbourhood) to a strong one are edges too.
    while True:
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * weak
        grown = torch.maximum(grown, edges)
        if torch.equal(grown, edges):
            break
        edges = grown
    mask = (edges[0, 0].numpy() > 0).astype(np.uint8) * 255
    return Image.fromarray(np.stack([mask] * 3, axis=-1))


def control_map(unit: ControlNetUnit, source: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image the ControlNet sees: the unit's preprocessor run on its image, fitted to ``size``.

    With pixel perfect the image is fitted first and preprocessed at the output size; otherwise it
    is preprocessed at ``processor_res`` (short side) and the map fitted afterwards, as the
    extension does.
    """
    source = source.convert("RGB")
    if unit.module == "none":
        return fit(source, size, unit.resize_mode)
    if unit.pixel_perfect or unit.processor_res <= 0:
        return _preprocess(unit, fit(source, size, unit.resize_mode))
    scale = unit.processor_res / min(source.width, source.height)
    working = source.resize(
        (max(1, round(source.width * scale)), max(1, round(source.height * scale))), Image.Resampling.LANCZOS
    )
    return fit(_preprocess(unit, working), size, unit.resize_mode)


def _preprocess(unit: ControlNetUnit, image: Image.Image) -> Image.Image:
    if unit.module == "canny":
        return canny(image, *unit.thresholds)
    if unit.module == "invert":
        return Image.fromarray(255 - np.asarray(image))
    return image  # pragma: no cover - the contract allows no other module
