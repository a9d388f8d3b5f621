"""diffusers state dicts renamed to the original single-file (LDM) key names: the UNet
(``model.diffusion_model.*``), the VAE (``first_stage_model.*`` with 1x1-conv attention), CLIP
under ``cond_stage_model`` / ``conditioner.embedders`` (OpenCLIP names for SDXL's second encoder)
and ControlNets (``control_model.*``): what a real ``v1-5-pruned-emaonly.safetensors`` holds.
"""

from __future__ import annotations

from typing import Any, Literal

# Checkpoint layouts: SD1's CLIP under cond_stage_model.transformer, SD2's OpenCLIP under
# cond_stage_model.model, SDXL's two encoders under conditioner.embedders (the refiner: OpenCLIP only).
Family = Literal["sd1", "sd1_inpainting", "sd2", "sdxl", "sdxl_refiner"]


_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]  # fmt: skip


def _rename_resnet(rest: str) -> str:
    for old, new in _RESNET:
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_to_ldm(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """Rename a diffusers UNet state dict to LDM names (``input_blocks``/``output_blocks``)."""
    layers = config.layers_per_block
    has_attention_up = ["CrossAttn" in kind for kind in config.up_block_types]
    out: dict[str, Any] = {}
    fixed = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    }  # fmt: skip
    for key, tensor in state.items():
        parts = key.split(".")
        new: str | None = None
        module = next((m for m in fixed if key.startswith(m + ".")), None)
        if module is not None:
            new = fixed[module] + key[len(module) :]
        elif parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{i * (layers + 1) + j + 1}.0.{_rename_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{i * (layers + 1) + j + 1}.1.{rest}"
            elif kind == "downsamplers":
                new = f"input_blocks.{(i + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * j}.{_rename_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"output_blocks.{i * (layers + 1) + j}.0.{_rename_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{i * (layers + 1) + j}.1.{rest}"
            elif kind == "upsamplers":
                slot = 2 if has_attention_up[i] else 1
                new = f"output_blocks.{i * (layers + 1) + layers}.{slot}.{rest}"
        if new is None:
            raise ValueError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = tensor
    return out


def vae_to_ldm(state: dict[str, Any], levels: int) -> dict[str, Any]:
    """Rename a diffusers AutoencoderKL state dict to LDM names under ``first_stage_model.``."""
    out: dict[str, Any] = {}
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in state.items():
        tensor = value
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = new.split(".")
        if parts[1] == "down_blocks":
            i, kind = int(parts[2]), parts[3]
            if kind == "resnets":
                new = f"{parts[0]}.down.{i}.block.{parts[4]}." + ".".join(parts[5:])
            else:
                new = f"{parts[0]}.down.{i}.downsample." + ".".join(parts[5:])
        elif parts[1] == "up_blocks":
            i, kind = levels - 1 - int(parts[2]), parts[3]
            if kind == "resnets":
                new = f"{parts[0]}.up.{i}.block.{parts[4]}." + ".".join(parts[5:])
            else:
                new = f"{parts[0]}.up.{i}.upsample." + ".".join(parts[5:])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                rest = ".".join(parts[4:])
                for old, replacement in attention.items():
                    if rest.startswith(old + "."):
                        rest = replacement + rest[len(old) :]
                new = f"{parts[0]}.mid.attn_1.{rest}"
                # LDM's VAE attention uses 1x1 convolutions where diffusers uses linears.
                if new.endswith(".weight") and tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
        out["first_stage_model." + new] = tensor
    return out


def _clip_state(model: Any) -> dict[str, Any]:
    # transformers 5 dropped the "text_model." prefix from CLIPTextModel's state dict keys.
    return clip_state_with_prefix(model.state_dict())


def open_clip_from_clip(model: Any, prefix: str) -> dict[str, Any]:
    """CLIPTextModelWithProjection weights in OpenCLIP's names (SDXL's second text encoder)."""
    return open_clip_from_clip_state(_clip_state(model), model.config.num_hidden_layers, prefix)


def clip_state_with_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A CLIP text model's state dict with the ``text_model.`` prefix the single files carry."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in state.items()}


def open_clip_from_clip_state(state: dict[str, Any], layers: int, prefix: str) -> dict[str, Any]:
    """A CLIP text state dict (``text_model.*``, ``text_projection.weight``) in OpenCLIP's names
    (SD2's encoder, SDXL's second)."""
    import torch

    out: dict[str, Any] = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
        # SD2's encoder is loaded without its projection (the UNet reads the hidden states); the
        # file carries one all the same, as OpenCLIP saves it.
        prefix + "text_projection": (
            state["text_projection.weight"].T.contiguous()
            if "text_projection.weight" in state
            else torch.eye(state["text_model.final_layer_norm.weight"].shape[0])
        ),
        prefix + "logit_scale": torch.tensor(4.6052),
    }
    for layer in range(layers):
        src = f"text_model.encoder.layers.{layer}."
        dst = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
    return out


def single_file_state_dict(pipeline: Any, family: Family) -> dict[str, Any]:
    state = unet_to_ldm(pipeline.unet.state_dict(), pipeline.unet.config)
    state |= vae_to_ldm(pipeline.vae.state_dict(), len(pipeline.vae.config.block_out_channels))
    if family in ("sd1", "sd1_inpainting"):
        state |= {"cond_stage_model.transformer." + k: v for k, v in _clip_state(pipeline.text_encoder).items()}
    elif family == "sd2":
        state |= open_clip_from_clip(pipeline.text_encoder, "cond_stage_model.model.")
    elif family == "sdxl_refiner":
        state |= open_clip_from_clip(pipeline.text_encoder_2, "conditioner.embedders.0.model.")
    else:
        state |= {"conditioner.embedders.0.transformer." + k: v for k, v in _clip_state(pipeline.text_encoder).items()}
        state |= open_clip_from_clip(pipeline.text_encoder_2, "conditioner.embedders.1.model.")
    return {k: v.detach().contiguous() for k, v in state.items()}


def controlnet_to_ldm(state: dict[str, Any], unet_config: Any) -> dict[str, Any]:
    """Rename a diffusers ControlNet state dict to the original layout (``control_model.*``)."""
    own: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "controlnet_down_blocks":
            own[f"zero_convs.{parts[1]}.0.{parts[2]}"] = tensor
        elif parts[0] == "controlnet_mid_block":
            own[f"middle_block_out.0.{parts[1]}"] = tensor
        elif parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                index = 0
            elif parts[1] == "blocks":
                index = 2 * (int(parts[2]) + 1)
            else:  # conv_out comes after the last block
                index = 2 * (len({k.split(".")[2] for k in state if ".blocks." in k}) + 1)
            own[f"input_hint_block.{index}.{parts[-1]}"] = tensor
        else:
            shared[key] = tensor
    renamed = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(shared, unet_config).items()}
    return {"control_model." + k: v.detach().contiguous() for k, v in (renamed | own).items()}
