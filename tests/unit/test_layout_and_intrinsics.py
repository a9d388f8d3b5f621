import re

import pytest

from sdpipe.contracts.models import ModelType
from sdpipe.contracts.s3_events import S3EventNotification
from sdpipe.layout import parse_model_key
from sdpipe_local.intrinsics import Resolver, references


@pytest.mark.parametrize(
    ("key", "kind", "name", "ext"),
    [
        (
            "models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
            ModelType.CHECKPOINT,
            "v1-5-pruned-emaonly",
            ".safetensors",
        ),
        ("models/Lora/styles/my lora.safetensors", ModelType.LORA, "styles/my lora", ".safetensors"),
        ("models/embeddings/bad-hands.pt", ModelType.EMBEDDING, "bad-hands", ".pt"),
        ("models/VAE/sdxl_vae.safetensors", ModelType.VAE, "sdxl_vae", ".safetensors"),
    ],
)
def test_model_keys(key, kind, name, ext):
    parsed = parse_model_key(key)
    assert parsed is not None
    assert (parsed.type, parsed.name, parsed.extension) == (kind, name, ext)


@pytest.mark.parametrize(
    "key", ["models/Unknown/x.safetensors", "datasets/a/b.png", "models/Lora/", "models/x.safetensors"]
)
def test_keys_outside_model_folders(key):
    assert parse_model_key(key) is None


def test_s3_keys_are_url_decoded():
    body = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "b"},
                    "object": {"key": "models/Lora/my+lora%28v2%29.safetensors", "size": 3},
                },
            }
        ]
    }
    record = S3EventNotification.model_validate(body).records[0]
    assert record.s3.object.decoded_key == "models/Lora/my lora(v2).safetensors"


def test_resolver_handles_the_common_intrinsics():
    created = {"Queue": ("url", {"Arn": "arn:q"})}
    resolver = Resolver(
        {"Env": "dev", "AWS::Region": "us-east-1"},
        {"IsDev": {"Fn::Equals": [{"Ref": "Env"}, "dev"]}},
        ref=lambda name: created[name][0],
        getatt=lambda name, attr: created[name][1][attr],
    )
    value = {
        "A": {"Fn::Sub": "${Env}-${AWS::Region}-${Queue.Arn}-${!Literal}"},
        "B": {"Fn::If": ["IsDev", {"Fn::Join": ["/", ["x", {"Ref": "Queue"}]]}, "no"]},
        "C": {"Fn::Select": [1, {"Fn::Split": [",", "a,b,c"]}]},
        "D": {"Fn::If": ["IsDev", {"Ref": "AWS::NoValue"}, 1]},
    }
    assert resolver.resolve(value) == {"A": "dev-us-east-1-arn:q-${Literal}", "B": "x/url", "C": "b"}
    assert references(value) == {"Env", "AWS::Region", "Queue", "AWS::NoValue"}


@pytest.mark.parametrize(
    ("name", "source", "stored"),
    [
        (None, "style_v2.safetensors", "style_v2.safetensors"),
        ("sdxl/style", "style_v2.safetensors", "sdxl/style.safetensors"),  # listed as sdxl/style
        ("v1.5-pruned", "v1-5-pruned.ckpt", "v1.5-pruned.ckpt"),  # ".5-pruned" is no model extension
        ("epic.realism", "e.safetensors", "epic.realism.safetensors"),  # too long for an extension
        ("style.v2", "s.safetensors", "style.v2.safetensors"),
        ("mine.SafeTensors", "x.safetensors", "mine.SafeTensors"),
        ("mine.safetensors", "12345", "mine.safetensors"),  # a download URL without a name
    ],
)
def test_a_name_without_an_extension_takes_the_sources(name, source, stored):
    from sdpipe.layout import named_like_source

    assert named_like_source(name, source) == stored


@pytest.mark.parametrize(
    ("name", "source", "words"),
    [
        (
            "mine.ckpt",
            "style.safetensors",
            "'mine.ckpt' ends in .ckpt but the source 'style.safetensors' is a .safetensors",
        ),
        ("mine", "12345", "'mine' has no model extension and the source ('12345') gives none"),
        ("mine", None, "the source ('unnamed') gives none"),
        ("x.exe", "style.safetensors", "'x.exe' has extension '.exe', which is not a model's"),
        ("notes.JSON", None, "has extension '.json', which is not a model's"),
    ],
)
def test_a_name_that_contradicts_its_source_is_refused_naming_both(name, source, words):
    from sdpipe.layout import named_like_source

    with pytest.raises(ValueError, match=re.escape(words)):
        named_like_source(name, source)
