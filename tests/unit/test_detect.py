import pytest

from sdpipe.contracts.models import ModelFamily, ModelType
from sdpipe.inspect.detect import detect
from tests.helpers import kohya_lora

UNET = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def shapes(tensors):
    return {name: shape for name, (_dtype, shape) in tensors.items()}


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({UNET, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"}, ModelFamily.SD1),
        ({UNET, "cond_stage_model.model.token_embedding.weight"}, ModelFamily.SD2),
        (
            {UNET, "conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.ln_final.weight"},
            ModelFamily.SDXL,
        ),
        ({UNET, "conditioner.embedders.0.model.ln_final.weight"}, ModelFamily.SDXL_REFINER),
    ],
)
def test_checkpoint_family_from_text_encoder_layout(keys, family):
    found = detect(keys)
    assert found is not None
    assert (found.type, found.family) == (ModelType.CHECKPOINT, family)


def test_unet_only_checkpoint_family_from_context_width_and_inpainting_variant():
    found = detect(
        {UNET, "model.diffusion_model.input_blocks.0.0.weight"},
        {UNET: (320, 1024), "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)},
    )
    assert found is not None
    assert found.family is ModelFamily.SD2
    assert found.details["variant"] == "inpainting"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_kohya_lora_family_from_shapes(family):
    tensors = kohya_lora(family, rank=8)
    found = detect(tensors, shapes(tensors))
    assert found is not None
    assert found.type is ModelType.LORA
    assert found.family is ModelFamily(family)
    assert found.details["rank"] == "8"


def test_lora_metadata_wins_over_guessing():
    tensors = kohya_lora("sd1")
    found = detect(tensors, shapes(tensors), {"ss_base_model_version": "sdxl_base_v1-0"})
    assert found is not None and found.family is ModelFamily.SDXL


def test_diffusers_peft_lora():
    keys = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",
        "text_encoder_2.x.lora_B.weight",
    }
    found = detect(keys)
    assert found is not None
    assert (found.type, found.family, found.details["naming"]) == (ModelType.LORA, ModelFamily.SDXL, "diffusers")


@pytest.mark.parametrize(
    ("keys", "shape_map", "kind", "family"),
    [
        ({"emb_params"}, {"emb_params": (2, 768)}, ModelType.EMBEDDING, ModelFamily.SD1),
        ({"clip_l", "clip_g"}, {"clip_l": (3, 768), "clip_g": (3, 1280)}, ModelType.EMBEDDING, ModelFamily.SDXL),
        ({"string_to_param", "string_to_token", "name"}, {}, ModelType.EMBEDDING, ModelFamily.UNKNOWN),
        (
            {"encoder.conv_in.weight", "decoder.conv_out.weight", "decoder.conv_in.weight"},
            {"decoder.conv_in.weight": (512, 4, 3, 3)},
            ModelType.VAE,
            ModelFamily.UNKNOWN,
        ),
        (
            {
                "control_model.input_hint_block.0.weight",
                "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            },
            {"control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)},
            ModelType.CONTROLNET,
            ModelFamily.SD1,
        ),
        (
            {"controlnet_cond_embedding.conv_in.weight", "add_embedding.linear_1.weight"},
            {},
            ModelType.CONTROLNET,
            ModelFamily.SDXL,
        ),
        ({"layer_structure", "activation_func", "linear.0.weight"}, {}, ModelType.HYPERNETWORK, ModelFamily.UNKNOWN),
    ],
)
def test_other_types(keys, shape_map, kind, family):
    found = detect(keys, shape_map)
    assert found is not None
    assert (found.type, found.family) == (kind, family)


def test_unrelated_tensors_are_not_a_model():
    assert detect({"fc.weight", "fc.bias"}) is None
