"""Checkpoints as users download them: the real architecture and key names, no config folder."""

from __future__ import annotations

import io

import boto3
import numpy as np
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from PIL import Image

from sdpipe_client.client import Sdpipe
from sdpipe_client.stack import StackOutputs
from sdpipe_inference.infotext import read_parameters
from sdpipe_local.random_models import create_random_checkpoint
from tests.integration.helpers import FOX_PARAMS, pointed_at, wait_active


def test_a_real_size_checkpoint_dropped_without_a_config_folder_generates(sdpipe_stack, tmp_path):
    """An SD1.5 as a user downloads it (random weights, ``sdpipe models create-random``), dropped
    with no <name>.config/ beside it: registration detects sd1 and the endpoint loads it with the
    shipped config and the offline tokenizer (the job failed MODEL_CONFIG_MISSING before)."""
    stack = sdpipe_stack
    with pointed_at(stack):
        client = Sdpipe(StackOutputs(stack.outputs))
        deploy = client.deploy_endpoint("real", instance_type="ml.g6.xlarge", min_instances=1)
        path = create_random_checkpoint("sd1", tmp_path / "real-sd1.safetensors", dtype="fp16", seed=5)
        key = "models/Stable-diffusion/real/real-sd1.safetensors"
        s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]
        # 64 MiB parts: the local S3 pays per part (a single 2 GB PUT is slower still), and this
        # test is about loading, not uploading. moto joins the parts in Python when the upload
        # completes, which on a loaded two-core machine can outlast botocore's 60 s read timeout
        # (its retry then finds the upload gone): this client waits longer.
        uploader = boto3.client(
            "s3", endpoint_url=stack.endpoint_url, config=Config(read_timeout=600), **stack.client_credentials()
        )
        uploader.upload_file(str(path), bucket, key, Config=TransferConfig(multipart_chunksize=64 * 2**20))
        path.unlink()
        record = wait_active(stack, key, timeout=180)
        assert record["family"] == "sd1" and record["details"]["in_channels"] == "4"
        assert client.wait(deploy, timeout_s=300)["status"] == "SUCCEEDED"
        params = FOX_PARAMS | {"model": "real-sd1", "steps": 2, "batch_size": 1, "n_iter": 1, "endpoint": "real"}
        job = client.wait(client.submit("txt2img", params), timeout_s=600)
        assert job["status"] == "SUCCEEDED", job.get("error")
        [image] = job["outputs"]["images"]
        data = s3.get_object(Bucket=bucket, Key=image.split("/", 3)[3])["Body"].read()
        assert np.array(Image.open(io.BytesIO(data))).shape == (64, 64, 3)
        assert "Model: real/real-sd1" in read_parameters(data)
        assert client.wait(client.delete_endpoint("real"), timeout_s=300)["status"] == "SUCCEEDED"
