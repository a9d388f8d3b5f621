"""Model registration from S3 drops, end to end on the local stack."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import time
import uuid

import pytest
import torch

from tests.helpers import kohya_lora, raw_safetensors, safetensors_bytes, wait_until


def unique(folder: str, ext: str = ".safetensors") -> str:
    return f"models/{folder}/test-{uuid.uuid4().hex[:8]}{ext}"


def events_for(listener, key: str, expected: int = 1, timeout: float = 10) -> list[dict]:
    def mine(events):
        return [e for e in events if (e.get("model") or {}).get("s3_key") == key]

    listener.wait_for(lambda got: len(mine(got)) >= expected, timeout_s=timeout)
    time.sleep(0.3)  # a duplicate would arrive about now
    return mine(listener.drain())


def test_lora_is_registered_with_a1111_hashes_and_announced(models, listener):
    body = safetensors_bytes(
        kohya_lora("sdxl"), metadata={"ss_network_dim": "4", "ss_output_name": "x", "ss_tag_frequency": "{}"}
    )
    key = unique("Lora")
    models.put(key, body)
    item = models.wait(key, "ACTIVE")
    header_length = int.from_bytes(body[:8], "little")
    assert item["type"] == "lora" and item["family"] == "sdxl" and item["format"] == "safetensors"
    assert item["sha256"] == hashlib.sha256(body).hexdigest()
    assert item["short_hash"] == item["sha256"][:10]
    assert item["tensor_hash"] == hashlib.sha256(body[8 + header_length :]).hexdigest()[:12]
    assert item["legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8]
    assert item["metadata"] == {"ss_network_dim": "4", "ss_output_name": "x"}
    assert int(item["size"]) == len(body)
    events = events_for(listener, key)
    assert [e["type"] for e in events] == ["model.registered"]
    assert events[0]["model"]["short_hash"] == item["short_hash"]


BAD_FILES = [
    ("truncated", safetensors_bytes({"w": ("F32", (1000,))})[:-100], "truncated"),
    ("header larger than the file", raw_safetensors({"w": 1}, length=1 << 40), "larger than the file"),
    (
        "header over the cap",
        raw_safetensors(b"{}", length=17 * 1024 * 1024) + bytes(17 * 1024 * 1024),
        "exceeds the 16777216-byte header cap",
    ),
    (
        "overlapping offsets",
        raw_safetensors(
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            b"\0" * 6,
        ),
        "overlaps",
    ),
    (
        "out-of-range offsets",
        raw_safetensors({"a": {"dtype": "U8", "shape": [400], "data_offsets": [0, 400]}}, b"\0" * 4),
        "truncated or an offset is out of range",
    ),
    (
        "unknown dtype",
        raw_safetensors({"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4),
        "unknown dtype",
    ),
    (
        "shape mismatch",
        raw_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4),
        "needs 16 bytes",
    ),
    ("non-JSON header", raw_safetensors(b"{not json}"), "not valid JSON"),
    ("zero bytes", b"", "empty"),
    ("PNG renamed", b"\x89PNG\r\n\x1a\n" + os.urandom(500), "PNG image"),
    ("not a model", safetensors_bytes({"fc.weight": ("F32", (4, 4))}), "match no supported model type"),
]


@pytest.mark.parametrize(("case", "body", "reason"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_safetensors_is_rejected_with_the_problem_named(models, listener, case, body, reason):
    key = unique("Lora")
    models.put(key, body)
    item = models.wait(key, "REJECTED", timeout=15)
    assert reason in item["error"]["message"], item["error"]
    events = events_for(listener, key)
    assert [e["type"] for e in events] == ["model.rejected"]
    assert events[0]["error"]["code"] == item["error"]["code"]


def test_wrong_folder_is_rejected_naming_both(models):
    key = unique("Stable-diffusion")
    models.put(key, safetensors_bytes(kohya_lora("sd1")))
    item = models.wait(key, "REJECTED")
    assert item["error"]["code"] == "WRONG_FOLDER"
    assert "is a LoRA" in item["error"]["message"] and "models/Stable-diffusion/" in item["error"]["message"]
    assert "models/Lora/" in item["error"]["message"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sdpipe-pwned",))


@pytest.mark.parametrize("container", ["zip", "bare"])
def test_malicious_pickle_is_rejected_and_never_executed(models, container):
    if container == "zip":
        buffer = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Exploit()}, buffer)
        body = buffer.getvalue()
    else:
        body = pickle.dumps({"evil": _Exploit()}, protocol=2)
    key = unique("Stable-diffusion", ".ckpt")
    models.put(key, body)
    item = models.wait(key, "REJECTED")
    assert item["error"]["code"] == "UNSAFE_PICKLE"
    assert "posix.system" in item["error"]["message"]
    assert not os.path.exists("/tmp/sdpipe-pwned")


def test_safe_torch_checkpoint_is_registered_as_pickle(models):
    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
                "cond_stage_model.transformer.text_model.x": torch.zeros(1),
            }
        },
        buffer,
    )
    key = unique("Stable-diffusion", ".ckpt")
    models.put(key, buffer.getvalue())
    item = models.wait(key, "ACTIVE")
    assert (item["format"], item["type"], item["family"]) == ("pickle", "checkpoint", "sd1")


def test_tiny_checkpoints_register_with_their_family(models, tiny_checkpoints):
    for family, path in tiny_checkpoints.items():
        key = unique("Stable-diffusion")
        models.s3.upload_file(str(path), models.bucket, key)  # multipart: moto sends two events
        item = models.wait(key, "ACTIVE")
        assert item["family"] == family
        assert item["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_duplicate_deliveries_change_nothing(models, listener, stack):
    key = unique("Lora")
    etag = models.put(key, safetensors_bytes(kohya_lora("sd1")))
    first = models.wait(key, "ACTIVE")
    events_for(listener, key)
    # The same S3 notification delivered three more times, as SQS may.
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": models.bucket}, "object": {"key": key, "size": 1, "eTag": etag}},
    }
    sqs = stack.client("sqs")
    queue = stack.outputs["RegisterModelQueueUrl"]
    for _ in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"Records": [record]}))
    wait_until(lambda: models.queue_depths()[0] == 0, 30, every=0.1, what="the registration queue draining")
    assert models.item(key)["updated_at"] == first["updated_at"]
    time.sleep(0.5)
    announced = [e for e in listener.drain() if (e.get("model") or {}).get("s3_key") == key]
    assert [e["type"] for e in announced] == ["model.registered"]


def test_overwrite_registers_the_new_content_and_delete_marks_deleted(models, listener):
    key = unique("Lora")
    models.put(key, safetensors_bytes(kohya_lora("sd1")))
    first = models.wait(key, "ACTIVE")
    second_body = safetensors_bytes(kohya_lora("sdxl"), fill=b"\x07")
    etag = models.put(key, second_body)
    second = models.wait(key, "ACTIVE", etag=etag)
    assert second["model_id"] == first["model_id"]
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]
    assert second["sha256"] == hashlib.sha256(second_body).hexdigest() != first["sha256"]
    assert second["family"] == "sdxl"
    models.s3.delete_object(Bucket=models.bucket, Key=key)
    models.wait(key, "DELETED")
    events = events_for(listener, key, expected=3)
    assert [e["type"] for e in events] == ["model.registered", "model.registered", "model.deleted"]


def test_overwriting_a_rejected_file_with_a_good_one_clears_the_error(models):
    key = unique("Lora")
    models.put(key, b"garbage!" * 4)
    models.wait(key, "REJECTED")
    etag = models.put(key, safetensors_bytes(kohya_lora("sd1")))
    item = models.wait(key, "ACTIVE", etag=etag)
    assert "error" not in item


def test_companion_files_and_other_prefixes_are_ignored(models):
    models.put("models/Stable-diffusion/preview.preview.png", b"png")
    models.put("models/Stable-diffusion/v2.yaml", b"model: {}")
    models.stack.wait_idle()
    assert models.item("models/Stable-diffusion/preview.preview.png") is None
    assert models.item("models/Stable-diffusion/v2.yaml") is None


def test_nothing_lands_in_the_dead_letter_queue(models):
    # Every bad input above was answered with REJECTED, not with a failed message.
    assert models.queue_depths()[1] == 0
