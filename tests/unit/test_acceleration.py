"""The GPU fast path's decisions, on the CPU: which dtype each family runs in, what an endpoint's
environment turns on, when the VAE tiles, and that the warm-up calls a UNet the way a pipeline does."""

from __future__ import annotations

import pytest

from sdpipe_inference.acceleration import TILE_PIXELS, Acceleration, parse_warmup, unet_inputs


def test_half_precision_on_gpus_bf16_for_sdxl_where_the_gpu_has_it(monkeypatch):
    import torch

    assert Acceleration("cpu").torch_dtype("sdxl") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    gpu = Acceleration("cuda")
    assert gpu.torch_dtype("sd1") == torch.float16 and gpu.torch_dtype("sd2") == torch.float16
    assert gpu.torch_dtype("sdxl") == torch.bfloat16 and gpu.torch_dtype("sdxl_refiner") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a T4: fp16, diffusers upcasts the VAE
    assert gpu.torch_dtype("sdxl") == torch.float16
    assert Acceleration("cuda", dtype="fp32").torch_dtype("sd1") == torch.float32


def test_the_endpoint_environment_sets_the_options():
    options = Acceleration.from_environment(
        "cuda", {"SDPIPE_COMPILE": "1", "SDPIPE_DTYPE": "BF16", "SDPIPE_WARMUP": "sd1:512x512, sdxl:1024x768"}
    )
    assert options.compile and options.dtype == "bf16" and options.channels_last
    assert options.warmup == (("sd1", 512, 512), ("sdxl", 1024, 768))
    assert not Acceleration.from_environment("cuda", {}).compile
    assert not Acceleration.from_environment("cuda", {"SDPIPE_NO_CHANNELS_LAST": "true"}).channels_last
    with pytest.raises(ValueError, match="SDPIPE_DTYPE 'int8'"):
        Acceleration.from_environment("cuda", {"SDPIPE_DTYPE": "int8"})
    with pytest.raises(ValueError, match="'sd1:big' is not FAMILY:WIDTHxHEIGHT"):
        parse_warmup("sd1:big")


def test_the_vae_tiles_large_pictures_only(tiny_checkpoints):
    from sdpipe_local.tiny_models import load_tiny_checkpoint

    pipeline = load_tiny_checkpoint(tiny_checkpoints["sd1"])
    acceleration = Acceleration("cpu")
    acceleration.prepare(pipeline)
    acceleration.for_size(pipeline, 2048, 2048)
    assert TILE_PIXELS < 2048 * 2048 and pipeline.vae.use_tiling
    acceleration.for_size(pipeline, 1024, 1024)
    assert not pipeline.vae.use_tiling
    processors = {type(p).__name__ for p in pipeline.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}  # PyTorch's fused attention


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_warm_up_calls_the_unet_as_a_pipeline_does(tiny_checkpoints, family):
    import torch

    from sdpipe_local.tiny_models import load_tiny_checkpoint

    unet = load_tiny_checkpoint(tiny_checkpoints[family]).unet
    args, kwargs = unet_inputs(unet.config, family, (64, 48), device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        out = unet(*args, **kwargs).sample
    assert tuple(out.shape) == (2, 4, 6, 8)
