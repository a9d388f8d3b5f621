"""The deploy path a new user takes: the stack owns the ECR repositories, `make images` (`sdpipe images
push`) builds and pushes into them, and a deploy whose image is missing, or not an ECR image, or
whose role lacks a permission, fails at once with a cause that says what to do."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdpipe_client.cli import main
from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.images import checkout_revision
from sdpipe_client.stack import StackOutputs
from sdpipe_local.images import RepositoryImage, record_checkout_images

ROOT = Path(__file__).resolve().parents[2]
FAKE_DOCKER = ROOT / "tests" / "fixtures" / "fake_docker" / "docker.py"


@pytest.fixture
def client(stack, aws_env):
    return Sdpipe(StackOutputs(stack.outputs))


@pytest.fixture
def without_inference_image(stack):
    """The stack's inference repository as a fresh `sam deploy` leaves it: empty."""
    ecr = stack.client("ecr")
    uri = stack.outputs["InferenceRepositoryUri"]
    repository = uri.split("/", 1)[1]
    images = ecr.list_images(repositoryName=repository)["imageIds"]
    ecr.batch_delete_image(repositoryName=repository, imageIds=images)
    yield uri
    # Put the checkout's image back for the tests that follow.
    record_checkout_images(
        ecr, [RepositoryImage("InferenceRepository", repository, uri, ROOT / "images/inference/Dockerfile")], ROOT
    )


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """`docker` on PATH: records every call, and a push records the image in the local ECR."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "docker"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DOCKER}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_CHECKOUT", str(ROOT))
    return log


def test_the_template_owns_scanned_repositories_that_keep_the_last_images(stack):
    ecr = stack.client("ecr")
    for output in ("InferenceRepositoryUri", "TrainingRepositoryUri"):
        repository = stack.outputs[output].split("/", 1)[1]
        [described] = ecr.describe_repositories(repositoryNames=[repository])["repositories"]
        assert described["imageScanningConfiguration"]["scanOnPush"] is True
        rules = json.loads(ecr.get_lifecycle_policy(repositoryName=repository)["lifecyclePolicyText"])["rules"]
        assert rules[0]["selection"]["countType"] == "imageCountMoreThan"
        # The local stack recorded the checkout's image, tagged latest and with the commit.
        tags = {
            t for image in ecr.describe_images(repositoryName=repository)["imageDetails"] for t in image["imageTags"]
        }
        assert {"latest", checkout_revision(ROOT)} <= tags


def test_a_deploy_without_its_image_fails_at_once_and_make_images_fixes_it(
    stack, client, without_inference_image, fake_docker
):
    uri = without_inference_image
    job_id = client.deploy_endpoint("imageless")
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=60)
    error = client.get_job(job_id)["error"]
    assert error["code"] == "IMAGE_NOT_FOUND", error
    assert f"{uri}:latest" in error["message"] and "make images" in error["message"]
    assert not [e for e in client.list_endpoints() if e["name"] == "imageless" and e["status"] != "DELETED"]

    result = CliRunner().invoke(main, ["images", "push", "--template", str(ROOT / "template.yaml")])
    assert result.exit_code == 0, result.output
    calls = [json.loads(line) for line in fake_docker.read_text().splitlines()]
    registry = uri.split("/", 1)[0]
    login = calls[0]
    assert login["args"] == ["login", "--username", "AWS", "--password-stdin", registry] and login["stdin"]
    builds = [c["args"] for c in calls if c["args"][0] == "build"]
    revision = checkout_revision(ROOT)
    assert [b[b.index("--file") + 1] for b in builds] == [
        str(ROOT / "images/inference/Dockerfile"), str(ROOT / "images/training/Dockerfile"),
    ]  # fmt: skip
    assert all(b[b.index("--platform") + 1] == "linux/amd64" and b[-1] == str(ROOT) for b in builds)
    assert f"{uri}:{revision}" in builds[0] and f"{uri}:latest" in builds[0]
    pushes = [c["args"][1] for c in calls if c["args"][0] == "push"]
    assert pushes[:2] == [f"{uri}:{revision}", f"{uri}:latest"]

    job = client.wait(client.deploy_endpoint("imaged"), timeout_s=300)
    assert job["status"] == "SUCCEEDED"
    sagemaker = stack.client("sagemaker")
    config = sagemaker.describe_endpoint(EndpointName="sdpipe-imaged")["EndpointConfigName"]
    variant = sagemaker.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    # The endpoint runs the image its tag named at deploy time, pinned by digest.
    assert model["PrimaryContainer"]["Image"].startswith(f"{uri}@sha256:")
    client.wait(client.delete_endpoint("imaged"), timeout_s=300)


def test_an_image_that_is_not_in_ecr_is_refused_by_name(client):
    job_id = client.deploy_endpoint("dockerhub", image_uri="nginx:latest")
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=60)
    error = client.get_job(job_id)["error"]
    assert error["code"] == "VALIDATION_ERROR" and "params.image_uri" in error["message"]
    assert "not an Amazon ECR image URI" in error["message"]


def test_a_workflow_role_missing_a_permission_fails_the_deploy_with_access_denied(stack, client, revoke):
    revoke("EndpointStepsFunctionRole", "sagemaker:CreateModel")
    job_id = client.deploy_endpoint("unpermitted")
    with pytest.raises(JobFailed):
        client.wait(job_id, timeout_s=120)
    job = client.get_job(job_id)
    assert job["error"]["code"] == "ACCESS_DENIED", job["error"]
    assert "sagemaker:CreateModel" in job["error"]["message"] and "EndpointStepsFunctionRole" in job["error"]["message"]
    [record] = [e for e in client.list_endpoints() if e["name"] == "unpermitted"]
    assert record["status"] == "FAILED" and "sagemaker:CreateModel" in record["failure_reason"]


def test_training_without_its_image_fails_before_anything_is_prepared(stack, client):
    ecr = stack.client("ecr")
    uri = stack.outputs["TrainingRepositoryUri"]
    repository = uri.split("/", 1)[1]
    ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageTag": "latest"}])
    try:
        job_id = client.submit("train_lora", {"base_model": "any", "dataset": "any", "family": "sd1"})
        with pytest.raises(JobFailed):
            client.wait(job_id, timeout_s=60)
        error = client.get_job(job_id)["error"]
        assert error["code"] == "IMAGE_NOT_FOUND" and f"{uri}:latest" in error["message"], error
    finally:
        training = RepositoryImage("TrainingRepository", repository, uri, ROOT / "images/training/Dockerfile")
        record_checkout_images(ecr, [training], ROOT)
