"""The diffusers config folder a single-file checkpoint is loaded with, from what registration
detected, built offline.

The architectures ship with the project (``configs/<name>/``, written by ``tools/family_configs``);
the CLIP tokenizers are built here from the BPE merges file that the ``open_clip_torch`` wheel
ships (installed without its dependencies: only the file is read, the package is never imported),
so neither the images nor a local run download anything from a model hub. Used by the inference
server, the builtin trainer and the kohya engine alike. Standard library only (and PyYAML for
an LDM ``.yaml`` override).

    python -m sdpipe_inference.family_configs [DIR]   # build every config (the images do, at build)
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from sdpipe.errors import SdpipeError

CONFIGS = Path(__file__).resolve().parent / "configs"
BPE_DISTRIBUTION = "open_clip_torch"
BPE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 byte symbols, the same with the end-of-word mark, 48,894 merges and the
# two special tokens (49,408 in all); SimpleTokenizer and transformers read that many merges.
MERGES = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
KOHYA_CACHE = "kohya-tokenizers"  # under the configs folder


class ModelConfigMissing(SdpipeError):
    code = "MODEL_CONFIG_MISSING"


def config_name(family: str, variant: str | None = None, prediction: str | None = None) -> str:
    """The shipped config for a registered checkpoint: its family, then what registration found
    out about it (an inpainting UNet, SD2's v-prediction)."""
    name = family + (f"_{variant}" if variant else "") + ("_v" if prediction == "v_prediction" else "")
    if not (CONFIGS / name / "model_index.json").is_file():
        shipped = ", ".join(sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()))
        detail = f"family {family!r}" + (f", variant {variant!r}" if variant else "")
        detail += f", prediction {prediction!r}" if prediction else ""
        raise ModelConfigMissing(f"no diffusers config for {detail}: shipped are {shipped}")
    return name


def choice_from_ldm_yaml(text: str) -> tuple[str | None, str | None]:
    """(variant, prediction) from an original LDM config (``v2-inference-v.yaml``, an A1111
    ``<name>.yaml``): ``parameterization: v`` and a 9-channel UNet input are what choose a config."""
    import yaml  # PyYAML comes with transformers in both images

    try:
        document = yaml.safe_load(text)
        params = document["model"]["params"]
        unet = params.get("unet_config", {}).get("params", {})
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ModelConfigMissing(f"the checkpoint's .yaml is not an LDM config (model.params): {exc}") from None
    prediction = "v_prediction" if str(params.get("parameterization", "eps")).lower() == "v" else "epsilon"
    variant = "inpainting" if unet.get("in_channels") == 9 else None
    return variant, prediction


def built_configs_dir() -> Path:
    """Where the configs are assembled: ``SDPIPE_CONFIGS_DIR`` (the images build them there), else
    a folder under the temporary directory."""
    return Path(os.environ.get("SDPIPE_CONFIGS_DIR") or Path(tempfile.gettempdir()) / "sdpipe-configs")


def config_folder(name: str, cache_dir: Path) -> Path:
    """``configs/<name>`` with its tokenizers, as ``from_single_file(config=...)`` reads it; built
    once under ``cache_dir`` (atomically: concurrent builders each write their own, one wins)."""
    target = cache_dir / name
    if (target / "model_index.json").is_file():
        return target
    source = CONFIGS / name
    if not (source / "model_index.json").is_file():
        raise ModelConfigMissing(f"no diffusers config named {name!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        shutil.copytree(source, scratch, dirs_exist_ok=True)
        tokenizers = json.loads((scratch / "tokenizers.json").read_text())
        for folder, options in tokenizers.items():
            write_clip_tokenizer(scratch / folder, pad_token=options["pad_token"])
        try:
            os.rename(scratch, target)
        except OSError:  # another process built it first
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# sd-scripts loads its tokenizers from ``<tokenizer_cache_dir>/<hub id with / as _>`` when that
# folder exists (library/strategy_base.py, _load_tokenizer), else from the hub: these are its ids.
KOHYA_TOKENIZERS = {
    "openai_clip-vit-large-patch14": END,  # SD1, SDXL's first
    "stabilityai_stable-diffusion-2": "!",  # SD2 (it reads only the tokenizer of that repository)
    "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k": "!",  # SDXL's second
}


def kohya_tokenizer_cache(cache_dir: Path) -> Path:
    """The folder to pass sd-scripts as ``tokenizer_cache_dir``, so it never asks the hub."""
    for name, pad_token in KOHYA_TOKENIZERS.items():
        if not (cache_dir / name / "vocab.json").is_file():
            write_clip_tokenizer(cache_dir / name, pad_token=pad_token)
    return cache_dir


def bpe_merges_file() -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(BPE_DISTRIBUTION).locate_file(BPE_FILE)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelConfigMissing(
            f"the CLIP tokenizer is built from {BPE_FILE} of {BPE_DISTRIBUTION}, which is not installed "
            f"(pip install --no-deps {BPE_DISTRIBUTION})"
        )
    return path


def clip_vocabulary(merges_file: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's token ids and merges, as OpenAI's ``SimpleTokenizer`` builds them."""
    lines = gzip.decompress(merges_file.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : MERGES + 1]  # the first line is a version comment
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in merges] + [START, END]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, pad_token: str, merges_file: Path | None = None) -> None:
    """A ``CLIPTokenizer`` folder. SD1 and SDXL's first encoder pad with the end token, OpenCLIP's
    (SD2, SDXL's second) with ``!`` (id 0)."""
    vocabulary, merges = clip_vocabulary(merges_file or bpe_merges_file())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            special
            | {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace"},
            indent=2,
        )
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-printable-character table, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters), strict=True))


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else built_configs_dir()
    for source in sorted(CONFIGS.iterdir()):
        if (source / "model_index.json").is_file():
            print(config_folder(source.name, target))
    print(kohya_tokenizer_cache(target / KOHYA_CACHE))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
