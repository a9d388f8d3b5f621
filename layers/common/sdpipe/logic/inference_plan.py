"""Planning a txt2img/img2img request before its job exists: the A1111 payload validated, every
model it names resolved (checkpoint, LoRAs and embeddings in the prompt, VAE, ControlNets), input
images checked, the endpoint chosen. Anything wrong raises the error that fails the request."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sdpipe.adapters.endpoints_table import EndpointsTable
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.contracts.endpoints import EndpointRecord, EndpointStatus
from sdpipe.contracts.inference import (
    Img2ImgParams,
    InvocationInput,
    ModelFile,
    Txt2ImgParams,
    WeightedModelFile,
    extra_networks,
)
from sdpipe.contracts.jobs import Action, RequestEnvelope
from sdpipe.contracts.models import ModelFamily, ModelRecord, ModelType
from sdpipe.errors import EndpointNotFound, ModelNotFound, NoEndpointInService, ValidationFailed
from sdpipe.inspect.images import SNIFF_BYTES, image_format
from sdpipe.logic.model_refs import resolve_model
from sdpipe.logic.parallel import io_pool
from sdpipe.logic.workflows import validated

# Endpoint statuses that accept invocations (an endpoint being updated keeps serving).
_SERVING = {EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING}
_NO_VAE = {"", "Automatic", "None", "auto"}
_MAX_IMAGE_BYTES = 32 * 1024 * 1024


def _listed(models: ModelsTable, model_type: ModelType) -> list[ModelRecord]:
    return list(models.list(model_type))


class _PrefetchedCatalog:
    """The model lists one request needs, fetched at once; other lookups go to the table."""

    def __init__(self, models: ModelsTable, types: list[ModelType]) -> None:
        self._models = models
        self._lists: dict[ModelType, Future[list[ModelRecord]]] = {
            model_type: io_pool.submit(_listed, models, model_type) for model_type in types
        }

    def list(self, model_type: ModelType | None = None) -> Sequence[ModelRecord]:
        if model_type is not None and model_type in self._lists:
            return self._lists[model_type].result()
        return list(self._models.list(model_type))

    def find_by_hash_prefix(self, prefix: str) -> Sequence[ModelRecord]:
        return self._models.find_by_hash_prefix(prefix)


@dataclass(frozen=True)
class Plan:
    """Everything decided before the job exists: the validated payload, its models, its endpoint."""

    invocation: InvocationInput
    endpoint: str
    sagemaker_endpoint: str
    warnings: list[str]


def sanitised(params: dict[str, Any]) -> dict[str, Any]:
    """The payload as stored on the job item: inline images replaced by their size (items are small)."""

    def shrink(value: Any) -> Any:
        if isinstance(value, str) and len(value) > 512 and not value.startswith("s3://"):
            return f"<inline data, {len(value)} characters>"
        if isinstance(value, list):
            return [shrink(v) for v in value]
        if isinstance(value, dict):
            return {k: shrink(v) for k, v in value.items()}
        return value

    return {k: shrink(v) for k, v in params.items()}


@dataclass
class InferencePlanner:
    models: ModelsTable
    endpoints: EndpointsTable
    store: ObjectStore

    def plan(self, envelope: RequestEnvelope) -> Plan:
        kind = envelope.action
        params_cls: type[Txt2ImgParams | Img2ImgParams] = Txt2ImgParams if kind == Action.TXT2IMG else Img2ImgParams
        params = validated(params_cls, envelope.params)
        warnings = params.warnings()
        wants_vae = (params.override_settings.sd_vae or "") not in _NO_VAE
        types = [ModelType.CHECKPOINT, ModelType.EMBEDDING]
        types += [ModelType.LORA] if "<" in params.prompt + params.negative_prompt else []
        types += [ModelType.VAE] if wants_vae else []
        types += [ModelType.CONTROLNET] if params.controlnet_units else []
        catalog = _PrefetchedCatalog(self.models, types)
        endpoint_future = io_pool.submit(self._choose_endpoint, params.endpoint)
        checkpoint = self._checkpoint(params.checkpoint, catalog)
        family = checkpoint.family or ModelFamily.UNKNOWN
        if family is ModelFamily.SDXL_REFINER and not isinstance(params, Img2ImgParams):
            raise ValidationFailed(
                f"params.model: {checkpoint.name!r} is an SDXL refiner, which refines an image it is given: "
                "use it with img2img (txt2img needs a base checkpoint)"
            )
        loras = self._loras(params, family, catalog)
        embeddings, skipped = self._embeddings(params, family, catalog)
        warnings += skipped
        vae = None
        if wants_vae:
            vae = resolve_model(
                str(params.override_settings.sd_vae), ModelType.VAE, catalog, family,
                field="params.override_settings.sd_vae",
            )  # fmt: skip
        if isinstance(params, Img2ImgParams):
            self._check_image(params.init_images[0], "params.init_images[0]")
            if params.mask:
                self._check_image(params.mask, "params.mask")
        controlnets = self._controlnets(params, family, catalog)
        endpoint = endpoint_future.result()
        files = list(
            io_pool.map(
                self._file,
                [checkpoint, *(m for m, _ in loras), *embeddings, *controlnets, *([vae] if vae else [])],
            )
        )
        lora_files = files[1 : 1 + len(loras)]
        after_loras = 1 + len(loras)
        after_embeddings = after_loras + len(embeddings)
        invocation = InvocationInput(
            job_id=envelope.job_id,
            request_id=envelope.request_id,
            context=envelope.context,
            kind=params.kind,
            params=envelope.params,
            model=files[0],
            loras=[WeightedModelFile(**f.model_dump(), weight=w) for f, (_, w) in zip(lora_files, loras, strict=True)],
            embeddings=files[after_loras:after_embeddings],
            controlnets=files[after_embeddings : after_embeddings + len(controlnets)],
            vae=files[-1] if vae else None,
        )
        return Plan(invocation, endpoint.name, endpoint.sagemaker_name or endpoint.name, warnings)

    def _checkpoint(self, reference: str | None, catalog: _PrefetchedCatalog) -> ModelRecord:
        if reference:
            return resolve_model(reference, ModelType.CHECKPOINT, catalog, field="params.model")
        active = [m for m in catalog.list(ModelType.CHECKPOINT) if m.is_active]
        if len(active) == 1:
            return active[0]
        names = ", ".join(sorted(f"{m.name} [{m.short_hash}]" for m in active)) or "none registered"
        raise ModelNotFound(
            f"params.model is required when more or less than one checkpoint is registered (checkpoints: {names})"
        )

    def _loras(
        self, params: Txt2ImgParams | Img2ImgParams, family: ModelFamily, catalog: _PrefetchedCatalog
    ) -> list[tuple[ModelRecord, float]]:
        found: list[tuple[ModelRecord, float]] = []
        for field, text in (("params.prompt", params.prompt), ("params.negative_prompt", params.negative_prompt)):
            try:
                uses = extra_networks(text, field)
            except ValueError as exc:
                raise ValidationFailed(str(exc)) from None
            for use in uses:
                if use.kind != "lora":
                    raise ValidationFailed(f"{field}: {use.text} - {use.kind} networks are not supported")
                model = resolve_model(use.name, ModelType.LORA, catalog, family, field=f"{field} {use.text}")
                found.append((model, use.weight))
        return found

    def _embeddings(
        self, params: Txt2ImgParams | Img2ImgParams, family: ModelFamily, catalog: _PrefetchedCatalog
    ) -> tuple[list[ModelRecord], list[str]]:
        """Embeddings named in the prompts (by file name, as the WebUI matches them)."""
        text = f"{params.prompt}\n{params.negative_prompt}"
        used, skipped = [], []
        for model in catalog.list(ModelType.EMBEDDING):
            if not model.is_active:
                continue
            word = model.name.rsplit("/", 1)[-1]
            if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
                continue
            if not model.is_for(family):
                skipped.append(f"embedding {word!r} is for {model.family}, not {family.value}; not applied")
                continue
            used.append(model)
        return used, skipped

    def _controlnets(
        self, params: Txt2ImgParams | Img2ImgParams, family: ModelFamily, catalog: _PrefetchedCatalog
    ) -> list[ModelRecord]:
        """The ControlNet model of every enabled unit, and its control image checked like an init image."""
        found = []
        for index, unit in enumerate(params.controlnet_units):
            field = f"params.alwayson_scripts.controlnet.args[{index}]"
            found.append(resolve_model(unit.model, ModelType.CONTROLNET, catalog, family, field=f"{field}.model"))
            if unit.control_image is not None:
                self._check_image(unit.control_image, f"{field}.image")
        return found

    def _check_image(self, value: str, field: str) -> None:
        if value.startswith("s3://"):
            key = self.store.key_of(value)
            if key is None:
                raise ValidationFailed(f"{field}: {value!r} is outside the assets bucket s3://{self.store.bucket}/")
            info = self.store.head(key)
            if info is None:
                raise ValidationFailed(f"{field}: {value} does not exist")
            if info.size > _MAX_IMAGE_BYTES:
                raise ValidationFailed(f"{field}: {value} is {info.size} bytes, over the {_MAX_IMAGE_BYTES} limit")
            head = self.store.read_range(info, 0, SNIFF_BYTES)
        else:
            payload = value.split(",", 1)[1] if value.startswith("data:") else value
            try:
                head = base64.b64decode(payload, validate=True)[:SNIFF_BYTES]
            except (binascii.Error, ValueError):
                raise ValidationFailed(f"{field} is neither an s3:// URI nor valid base64") from None
        if image_format(head) is None:
            raise ValidationFailed(f"{field} is not an image (PNG, JPEG, WebP, GIF or BMP)")

    def _choose_endpoint(self, wanted: str | None) -> EndpointRecord:
        if wanted:
            endpoint = self.endpoints.get(wanted)
            if endpoint is None or endpoint.status in (EndpointStatus.DELETING, EndpointStatus.DELETED):
                state = "was deleted" if endpoint else "does not exist"
                raise EndpointNotFound(f"params.endpoint {wanted!r} {state}")
            if endpoint.status not in _SERVING:
                raise NoEndpointInService(f"params.endpoint {wanted!r} is {endpoint.status}, not in service")
            return endpoint
        serving = self.endpoints.in_service()
        if not serving:
            known = ", ".join(f"{e.name} ({e.status})" for e in self.endpoints.all()) or "none"
            raise NoEndpointInService(f"no endpoint is in service to run this request (endpoints: {known})")
        return min(serving, key=lambda e: (e.in_flight, e.name))

    def _file(self, model: ModelRecord) -> ModelFile:
        key = model.s3_key
        stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
        config = f"{stem}.config"
        # A checkpoint may carry its diffusers config folder; nothing else needs one (saves a HEAD).
        is_checkpoint = model.type is ModelType.CHECKPOINT
        has_config = is_checkpoint and self.store.head(f"{config}/model_index.json") is not None
        # Else an A1111-style <name>.yaml may say what the weights are (v-prediction, inpainting).
        has_yaml = is_checkpoint and not has_config and self.store.head(f"{stem}.yaml") is not None
        return ModelFile(
            name=model.name,
            sha256=str(model.sha256),
            short_hash=model.short_hash or "",
            family=(model.family or ModelFamily.UNKNOWN).value,
            uri=self.store.uri(key),
            config_uri=self.store.uri(config) if has_config else None,
            variant=model.variant if is_checkpoint else None,
            prediction=model.prediction if is_checkpoint else None,
            original_config_uri=self.store.uri(f"{stem}.yaml") if has_yaml else None,
        )
