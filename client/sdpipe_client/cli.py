"""``sdpipe``: the command line for the pipeline, in AWS or on the embedded local stack."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from sdpipe.contracts.models import ModelType
from sdpipe.errors import SdpipeError
from sdpipe_client.client import JobFailed, Sdpipe, image_reference
from sdpipe_client.follow import PreviewFile, follow_generation
from sdpipe_client.formatting import print_endpoints, print_jobs, print_models
from sdpipe_client.stack import LOCAL_STATE_FILE, read_local_state, stack_outputs
from sdpipe_client.transfer import DEFAULT_CONCURRENCY


class _Settings:
    def __init__(self, stack: str) -> None:
        self.stack = stack


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """sdpipe's errors as click's: the message and exit status 1, no traceback."""
    try:
        yield
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc


def _show(settings: _Settings, read: Callable[[Sdpipe], Any], table: Callable[[Any], None] | None = None) -> None:
    """What ``read`` gets from the stack's functions, printed as JSON, or by ``table`` when given."""
    with _user_errors():
        value = read(Sdpipe.for_stack(settings.stack))
    if table is None:
        click.echo(json.dumps(value, indent=2, default=str))
    else:
        table(value)


def _local_module(name: str) -> Any:
    """Import part of the local stack package, which is a development install."""
    import importlib

    try:
        return importlib.import_module(f"sdpipe_local.{name}")
    except ImportError as exc:
        raise click.ClickException(
            f"this command needs the local stack package ({exc.name} is missing): run `make venv` "
            "in the sdpipe checkout, or pip install -e 'local[tiny]'"
        ) from exc


@click.group()
@click.option(
    "--stack", default="sdpipe", envvar="SDPIPE_STACK_NAME", show_default=True, help="CloudFormation stack name."
)
@click.pass_context
def main(ctx: click.Context, stack: str) -> None:
    """Stable Diffusion on AWS as an event-driven serverless pipeline."""
    ctx.obj = _Settings(stack)


# ---------------------------------------------------------------------- local
@main.group()
def local() -> None:
    """Run the whole application on this machine (the embedded local stack)."""


@local.command("up")
@click.option("--port", default=4599, show_default=True, help="Port of the local AWS endpoint (0: any free port).")
@click.option(
    "--template",
    default="template.yaml",
    show_default=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--state-dir", default=".sdpipe-local", show_default=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--allow-fetch-from",
    "allow_fetch_from",
    multiple=True,
    metavar="CIDR",
    help="Let fetch_model connect to this private/loopback network (e.g. 127.0.0.1/32 for a local file "
    "server). By default the local stack refuses them, as AWS does.",
)
@click.option(
    "--chaos",
    "chaos_seed",
    type=int,
    default=None,
    metavar="SEED",
    help="Inject faults from this seed: Lambda workers killed (mid-invocation, before a publish, at start-up), "
    "endpoint containers killed mid-invocation, DynamoDB/S3/SNS calls throttled, visibility timeouts shortened.",
)
@click.pass_obj
def local_up(  # noqa: PLR0917 - click passes options as arguments
    settings: _Settings,
    port: int,
    template: Path,
    state_dir: Path,
    allow_fetch_from: tuple[str, ...],
    chaos_seed: int | None,
) -> None:
    """Start the stack in the foreground; Ctrl-C stops every process it started."""
    runner = _local_module("runner")
    runner.run_foreground(
        template=template,
        port=port,
        state_dir=state_dir,
        stack_name=settings.stack,
        fetch_allowed_networks=allow_fetch_from,
        chaos_seed=chaos_seed,
    )


@local.command("outputs")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as a JSON object.")
@click.option(
    "--state-dir", default=".sdpipe-local", show_default=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.pass_obj
def local_outputs(settings: _Settings, as_json: bool, state_dir: Path) -> None:
    """The stack's Outputs (bucket, topics, tables) of the running local stack."""
    state = read_local_state(state_dir / LOCAL_STATE_FILE.name)
    if state is not None:
        outputs = state["outputs"]
    else:
        try:
            outputs = stack_outputs(settings.stack).values
        except SdpipeError as exc:
            raise click.ClickException(
                f"no local stack is running here ({LOCAL_STATE_FILE} is missing) and {exc.message}"
            ) from exc
    if as_json:
        click.echo(json.dumps(outputs, indent=2, sort_keys=True))
    else:
        for key in sorted(outputs):
            click.echo(f"{key:34} {outputs[key]}")


@local.command("demo")
def local_demo() -> None:
    """Start the stack, register tiny SD1.x and SDXL checkpoints, print them, stop."""
    demo = _local_module("demo")
    sys.exit(demo.run())


# ---------------------------------------------------------------------- models
@main.group()
def models() -> None:
    """Registered model files (checkpoints, LoRAs, embeddings, ControlNets, VAEs, hypernetworks)."""


@models.command("list")
@click.option("--type", "model_type", type=click.Choice([t.value for t in ModelType]), help="Only this type.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array of items).")
@click.pass_obj
def models_list(settings: _Settings, model_type: str | None, as_json: bool) -> None:
    """List registered models, as a table by default."""
    _show(settings, lambda client: client.list_models(model_type), None if as_json else print_models)


@models.command("create-tiny")
@click.option(
    "--family", type=click.Choice(["sd1", "sd1_inpainting", "sd2", "sdxl", "sdxl_refiner"]), required=True,
    help="sd2 is SD 2.x 768 (v-prediction).",
)  # fmt: skip
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .safetensors file to write."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def models_create_tiny(family: str, out: Path, seed: int) -> None:
    """Write a tiny random-weight checkpoint in the real single-file layout, and its config folder."""
    tiny = _local_module("tiny_models")
    config = tiny.create_tiny_checkpoint(family, out, seed=seed)
    click.echo(f"wrote {out} ({out.stat().st_size} bytes) and its diffusers config folder {config}/")


@models.command("create-random")
@click.option("--family", type=click.Choice(["sd1", "sd2", "sdxl", "sdxl_refiner"]), required=True)
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True)
@click.option(
    "--prediction", type=click.Choice(["epsilon", "v_prediction"]), help="SD2 only (default: v_prediction, SD 2.x 768)."
)
@click.option("--inpainting", is_flag=True, help="An inpainting model (9-channel UNet): SD1 only.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .safetensors file to write."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def models_create_random(  # noqa: PLR0917 - one per option
    family: str, dtype: str, prediction: str | None, inpainting: bool, out: Path, seed: int
) -> None:
    """Write a real-size checkpoint with random weights: the family's real architecture and
    single-file key names, no config folder (it loads like a downloaded one). For benchmarks and
    GPU checks; SD1 is about 2 GB in fp16, SDXL about 7 GB."""
    if inpainting and family != "sd1":
        raise click.UsageError("--inpainting: the inpainting config that ships is SD1's (sd-v1-5-inpainting)")
    random_models = _local_module("random_models")
    written = random_models.create_random_checkpoint(
        family, out, dtype=dtype, seed=seed, prediction=prediction, variant="inpainting" if inpainting else None
    )
    click.echo(f"wrote {written} ({written.stat().st_size / 2**30:.2f} GiB, {family}, {dtype}, random weights)")


# ---------------------------------------------------------------------- generation
def _generation_options(command: Any) -> Any:
    """Options shared by txt2img and img2img (A1111 payload fields); unset ones keep A1111 defaults."""
    options = [
        click.option("--model", "-m", help="Checkpoint: name, 'name [hash]' or a sha256 prefix."),
        click.option("--negative-prompt", "-n"),
        click.option("--steps", type=int),
        click.option("--sampler", "sampler_name", help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M".'),
        click.option("--scheduler", help="A1111 schedule type: Automatic, Karras, Exponential..."),
        click.option("--cfg-scale", type=float),
        click.option("--width", type=int),
        click.option("--height", type=int),
        click.option("--seed", type=int, help="-1 for a random seed; image i of the batch uses seed + i."),
        click.option("--batch-size", type=int),
        click.option("--n-iter", type=int, help="Number of batches."),
        click.option("--lora", "loras", multiple=True, help="NAME:WEIGHT, added to the prompt as <lora:NAME:WEIGHT>."),
        click.option("--vae", help="VAE override (a registered VAE's name)."),
        click.option("--clip-skip", type=int),
        click.option("--endpoint", help="Run on this endpoint (default: the least busy one in service)."),
        click.option("--request-id", help="Idempotency key (default: a new one); the job id derives from it."),
        click.option("--context", "context_json", help="JSON object echoed in every event about the job."),
        click.option("--wait", is_flag=True, help="Follow the job until it finishes: status, steps, it/s and ETA."),
        click.option(
            "--preview",
            is_flag=True,
            help="Keep the endpoint's preview in a local file (opened once, refreshed as it changes); waits.",
        ),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Save PNGs here (and wait)."),
        click.option("--timeout", default=900, show_default=True, help="Seconds --wait waits."),
        click.option("--json", "as_json", is_flag=True, help="Print the finished job as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _payload(prompt: str, options: dict[str, Any]) -> dict[str, Any]:
    loras = options.pop("loras")
    for lora in loras:
        name, _, weight = lora.partition(":")
        prompt += f" <lora:{name}:{weight or 1}>"
    params: dict[str, Any] = {"prompt": prompt}
    for field in ("model", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "width", "height",
                  "seed", "batch_size", "n_iter", "endpoint", "denoising_strength", "mask"):  # fmt: skip
        if options.get(field) is not None:
            params[field] = options[field]
    overrides = {}
    if options.get("vae"):
        overrides["sd_vae"] = options["vae"]
    if options.get("clip_skip"):
        overrides["CLIP_stop_at_last_layers"] = options["clip_skip"]
    if overrides:
        params["override_settings"] = overrides
    return params


def _run_generation(settings: _Settings, action: str, params: dict[str, Any], options: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    try:
        context = json.loads(options["context_json"]) if options.get("context_json") else {}
        if not isinstance(context, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--context")
        client = Sdpipe.for_stack(settings.stack)
        job_id = client.submit(action, params, request_id=options.get("request_id"), context=context)
        if not (options["wait"] or options["out"] or options["preview"]):
            click.echo(job_id)
            console.print(f"follow it with: sdpipe jobs get {job_id}")
            return
        preview = None
        if options["preview"]:
            folder = options["out"] or Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            preview = PreviewFile(folder / f"{job_id}-preview.png", lambda path: click.launch(str(path)))
            console.print(f"preview: {preview.path} (opened once the endpoint draws one)")
        job = follow_generation(client, job_id, timeout_s=options["timeout"], console=console, preview=preview)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--context") from exc
    except SdpipeError as exc:  # JobFailed among them: the job's error is the message
        raise click.ClickException(exc.message) from exc
    outputs = job.get("outputs") or {}
    if options["out"]:
        for path in client.download_images(job, options["out"]):
            console.print(f"saved {path}")
    if options["as_json"]:
        click.echo(json.dumps(job, indent=2, default=str))
    else:
        console.print(f"seeds {outputs.get('all_seeds')}; result {outputs.get('result')}")
        for warning in outputs.get("warnings") or []:
            console.print(f"[yellow]warning:[/] {warning}")


@main.command("txt2img")
@click.argument("prompt")
@_generation_options
@click.pass_obj
def txt2img(settings: _Settings, /, prompt: str, **options: Any) -> None:
    """Generate images from PROMPT (publishes a txt2img request on the requests topic)."""
    _run_generation(settings, "txt2img", _payload(prompt, options), options)


@main.command("img2img")
@click.argument("prompt")
@click.option("--init-image", required=True, help="A local image file (uploaded to the bucket) or an s3:// URI.")
@click.option("--mask", "mask_image", help="Inpainting mask (white = repaint): a file or an s3:// URI.")
@click.option("--denoising-strength", type=float, help="0-1: how much of the init image to repaint.")
@_generation_options
@click.pass_obj
def img2img(settings: _Settings, /, prompt: str, init_image: str, mask_image: str | None, **options: Any) -> None:
    """Generate images from PROMPT and an init image (publishes an img2img request)."""
    with _user_errors():
        client = Sdpipe.for_stack(settings.stack)
        options["mask"] = image_reference(mask_image, client) if mask_image else None
        params = _payload(prompt, options) | {"init_images": [image_reference(init_image, client)]}
    _run_generation(settings, "img2img", params, options)


# ---------------------------------------------------------------------- jobs
@main.group()
def jobs() -> None:
    """Jobs of every action: their status, outputs and errors."""


@jobs.command("get")
@click.argument("job_id")
@click.pass_obj
def jobs_get(settings: _Settings, job_id: str) -> None:
    """Print one job as JSON."""
    _show(settings, lambda client: client.get_job(job_id))


@jobs.command("list")
@click.option("--action", help="Only jobs of this action (txt2img, img2img, cancel_job...).")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def jobs_list(settings: _Settings, action: str | None, limit: int, as_json: bool) -> None:
    """The newest jobs first."""
    _show(settings, lambda client: client.list_jobs(action, limit), None if as_json else print_jobs)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--reason", default="cancelled from the sdpipe CLI", show_default=True)
@click.pass_obj
def jobs_cancel(settings: _Settings, job_id: str, reason: str) -> None:
    """Cancel a job that has not finished."""
    with _user_errors():
        job = Sdpipe.for_stack(settings.stack).cancel_job(job_id, reason)
    click.echo(f"{job['job_id']} {job['status']}")


# ---------------------------------------------------------------------- endpoints
@main.group()
def endpoints() -> None:
    """SageMaker asynchronous endpoints: deploy, update, delete (Step Functions workflows), list."""


def _endpoint_settings(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--instance-type", help="A GPU inference instance type, e.g. ml.g5.xlarge."),
            click.option("--min", "min_instances", type=int, help="Fewest instances (0: scale to zero when idle)."),
            click.option("--max", "max_instances", type=int, help="Most instances."),
            click.option("--max-concurrent", "max_concurrent_invocations", type=int,
                         help="Invocations one instance runs at once."),
            click.option("--image", "image_uri", help="Container image URI (default: the stack's InferenceImageUri)."),
            click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Container environment (repeat)."),
            click.option("--target-backlog", type=float, help="Autoscaling target: queued requests per instance."),
            click.option("--scale-in-cooldown", type=int, help="Seconds between scale-in steps."),
            click.option("--wait", is_flag=True, help="Follow the workflow until it ends."),
            click.option("--timeout", default=1800.0, show_default=True, help="Seconds --wait waits."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


def _settings_from(options: dict[str, Any]) -> dict[str, Any]:
    settings = {
        key: options[key]
        for key in ("instance_type", "min_instances", "max_instances", "max_concurrent_invocations", "image_uri")
        if options.get(key) is not None
    }
    if options.get("env"):
        pairs = [item.split("=", 1) for item in options["env"]]
        if any(len(pair) != 2 for pair in pairs):
            raise click.BadParameter("use KEY=VALUE", param_hint="--env")
        settings["environment"] = dict(pairs)
    scaling = {
        key: options[option]
        for key, option in (
            ("target_backlog_per_instance", "target_backlog"),
            ("scale_in_cooldown_seconds", "scale_in_cooldown"),
        )
        if options.get(option) is not None
    }
    if scaling:
        settings["scaling"] = scaling
    return settings


def _follow_endpoint_job(client: Sdpipe, name: str, job_id: str, options: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    if not options.get("wait"):
        click.echo(job_id)
        console.print(f"follow it with: sdpipe jobs get {job_id}   or   sdpipe endpoints list")
        return
    started = time.monotonic()
    last: list[str] = []

    def show(job: dict[str, Any] | None) -> None:
        record = next((e for e in client.list_endpoints() if e["name"] == name), {})
        state = f"job {job['status'] if job else 'PUBLISHED'}, endpoint {record.get('status', '-')}"
        if state not in last:
            last.append(state)
            console.print(f"{time.monotonic() - started:6.1f}s  {name}  {state}")

    with _user_errors(), console.status(f"waiting for {job_id}", spinner="dots"):
        client.wait(job_id, timeout_s=options["timeout"], poll_s=1.0, on_change=show)
    print_endpoints([e for e in client.list_endpoints() if e["name"] == name])


def _endpoint_change(verb: str, summary: str) -> None:
    """``endpoints deploy`` and ``endpoints update``: the same settings, another request."""

    @endpoints.command(verb, help=summary)
    @click.argument("name")
    @_endpoint_settings
    @click.pass_obj
    def change(settings: _Settings, /, name: str, **options: Any) -> None:
        client = Sdpipe.for_stack(settings.stack)
        publish = client.deploy_endpoint if verb == "deploy" else client.update_endpoint
        _follow_endpoint_job(client, name, publish(name, **_settings_from(options)), options)


_endpoint_change("deploy", "Deploy endpoint NAME (publishes a deploy_endpoint request).")
_endpoint_change("update", "Change endpoint NAME; settings not given keep their values (publishes update_endpoint).")


@endpoints.command("delete")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Follow the workflow until it ends.")
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
def endpoints_delete(settings: _Settings, /, name: str, **options: Any) -> None:
    """Delete endpoint NAME with its autoscaling, config and model (publishes delete_endpoint)."""
    client = Sdpipe.for_stack(settings.stack)
    _follow_endpoint_job(client, name, client.delete_endpoint(name), options)


@endpoints.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def endpoints_list(settings: _Settings, as_json: bool) -> None:
    """Every endpoint with its status, instance type, scaling range and jobs in flight."""
    _show(settings, lambda client: client.list_endpoints(), None if as_json else print_endpoints)


@endpoints.command("describe")
@click.argument("name")
@click.pass_obj
def endpoints_describe(settings: _Settings, name: str) -> None:
    """One endpoint as JSON: its record, SageMaker's view and its autoscaling."""
    _show(settings, lambda client: client.describe_endpoint(name))


# ---------------------------------------------------------------------- model intake
def _transfer_progress() -> Any:
    """Bytes, rate and ETA on stderr (stdout stays parseable: the result as one JSON line)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _finish_upload(client: Sdpipe, result: Any, wait: bool) -> None:
    if not wait or result.status != "RUNNING":
        click.echo(json.dumps({"job_id": result.job_id, "key": result.key, "status": result.status}))
        return
    try:
        job = client.wait(result.job_id, timeout_s=1800, poll_s=0.5)
    except JobFailed as exc:
        raise click.ClickException(exc.message) from exc
    model = (job.get("outputs") or {}).get("model") or {}
    click.echo(json.dumps({"job_id": result.job_id, "status": job["status"], "model": model}, default=str))


@main.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "model_type", type=click.Choice([t.value for t in ModelType]), required=True)
@click.option(
    "--name",
    help="Name under the type's folder (subfolders allowed), with or without the file's extension; "
    "default: the file's name.",
)
@click.option("--sha256", help="Expected sha256 (default: computed while uploading); registration verifies it.")
@click.option("--overwrite", is_flag=True, help="Replace a model file of the same name.")
@click.option(
    "--concurrency",
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Parts sent at once, as the AWS CLI (memory: this many 8 MiB parts).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the model is registered.")
@click.pass_obj
def upload(settings: _Settings, /, path: Path, model_type: str, **options: Any) -> None:
    """Upload a model file in parallel parts; run it again to resume an interrupted upload."""
    from sdpipe_client.transfer import Uploader

    client = Sdpipe.for_stack(settings.stack)
    with _user_errors(), _transfer_progress() as progress:
        task = progress.add_task(path.name, total=path.stat().st_size)
        result = Uploader(client, concurrency=options["concurrency"]).upload(
            path,
            ModelType(model_type),
            name=options["name"],
            sha256=options["sha256"],
            overwrite=options["overwrite"],
            progress=lambda n: progress.advance(task, n),
        )
    _finish_upload(client, result, options["wait"])


@main.command("sync")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Only list what would be uploaded.")
@click.option("--concurrency", default=DEFAULT_CONCURRENCY, show_default=True, help="Parts sent at once.")
@click.pass_obj
def sync(settings: _Settings, /, folder: Path, dry_run: bool, concurrency: int) -> None:
    """Upload every model file of a WebUI models/ folder not registered yet (by sha256)."""
    from sdpipe_client.sync import FolderSync

    syncing = FolderSync(Sdpipe.for_stack(settings.stack))
    with _user_errors():
        found = syncing.local_models(folder)
        with _transfer_progress() as progress:
            hashing = progress.add_task("sha256", total=sum(m.size for m in found))
            plan = syncing.plan(found, lambda n: progress.advance(hashing, n))
            for skipped in plan.skipped:
                name = (skipped.registered_as or {}).get("name")
                progress.console.print(f"skip    {skipped.model.type.value:12} {skipped.model.relative_name} "
                                       f"(registered as {name})")  # fmt: skip
            if dry_run:
                for planned in plan.todo:
                    progress.console.print(f"upload  {planned.model.type.value:12} {planned.model.relative_name}")
                return
            overall = progress.add_task(f"{len(plan.todo)} files", total=plan.bytes_to_send)
            results = syncing.upload(plan, concurrency, lambda n: progress.advance(overall, n))
        failures = syncing.settle(results)
    click.echo(f"{len(results)} uploaded, {len(plan.skipped)} already registered, {len(failures)} rejected")
    if failures:
        raise click.ClickException("\n".join(failures))


@main.command("fetch")
@click.argument("url")
@click.option("--type", "model_type", type=click.Choice([t.value for t in ModelType]), required=True)
@click.option(
    "--name",
    help="Name under the type's folder, with or without the file's extension (then the one of the URL "
    "or of the server's Content-Disposition); default: the server's name for it.",
)
@click.option("--sha256", help="Expected sha256; a mismatch fails the job and deletes the file.")
@click.option("--auth-secret", help="Secrets Manager secret (<stack>/...) holding the site's API token.")
@click.option("--overwrite", is_flag=True, help="Replace a model file of the same name.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the fetch until it ends.")
@click.pass_obj
def fetch(settings: _Settings, /, url: str, model_type: str, **options: Any) -> None:
    """Bring a model file from a URL into the bucket (the FetchModel workflow) and register it."""
    client = Sdpipe.for_stack(settings.stack)
    params = {"url": url, "type": model_type, "overwrite": options["overwrite"]}
    params |= {k: options[k] for k in ("name", "sha256", "auth_secret") if options[k]}
    job_id = client.submit("fetch_model", params)
    if not options["wait"]:
        click.echo(job_id)
        return
    with _user_errors(), _transfer_progress() as progress:
        task = progress.add_task(job_id, total=None)

        def show(job: dict[str, Any] | None) -> None:
            done = (job or {}).get("progress") or {}
            progress.update(task, total=done.get("bytes_total") or None, completed=done.get("bytes_done", 0))

        job = client.wait(job_id, timeout_s=6 * 3600, poll_s=1.0, on_poll=show)
    model = (job.get("outputs") or {}).get("model") or {}
    click.echo(json.dumps({"job_id": job_id, "status": job["status"], "model": model}, default=str))


def _register_commands() -> None:
    from sdpipe_client import images_cli, training_cli

    for command in (*training_cli.COMMANDS, *images_cli.COMMANDS):
        main.add_command(command)


_register_commands()


if __name__ == "__main__":
    main()
