"""CompleteMultipartUpload on the local endpoint as S3 does it: quickly, in constant memory, once.

moto (5.2) joins a multipart upload in memory several times over: the parts into a bytearray,
that into bytes, a second full copy for the default full-object checksum, and only then into the
new key's buffer. A 1 GiB upload took the local S3 6 s and 3 GiB of memory to complete (S3 answers
in well under a second whatever the size), which made every multipart upload, ours and the AWS
CLI's alike, look slow here, and a 4 GiB one could not complete on a small machine. moto also
announced the object twice, as ``ObjectCreated:Put`` (before its metadata was set) and as
``ObjectCreated:CompleteMultipartUpload``; S3 sends only the second.

Here the parts are copied one at a time into the new key's buffer, the checksum is updated on
the way, each part is freed once copied, and the key becomes visible only when it is whole. The
checks (a part missing or with another ETag, a part under 5 MiB before the last, no parts) and
what the key records (ETag ``md5-of-md5s-N``, metadata, tags, ACL, checksum) are moto's.
"""

from __future__ import annotations

import base64
import binascii
import importlib
from collections.abc import Callable, Iterator
from typing import Any

_CHUNK = 8 * 1024 * 1024
MOTO_COMPLETE: dict[str, Any] = {}  # moto's own, kept for comparison


def make_multipart_completion_streaming() -> None:
    """Patch moto's S3 backend (once; safe to call again)."""
    from moto.s3.models import S3Backend

    if S3Backend.complete_multipart_upload is not complete_streaming:
        MOTO_COMPLETE["function"] = S3Backend.complete_multipart_upload
        S3Backend.complete_multipart_upload = complete_streaming  # type: ignore[method-assign,assignment]


def complete_streaming(backend: Any, bucket_name: str, multipart_id: str, body: Iterator[tuple[int, str]]) -> Any:
    """moto's ``S3Backend.complete_multipart_upload``, part by part (see the module's docstring)."""
    from moto.s3 import notifications
    from moto.s3.models import FakeKey, MultipartChecksumBuilder
    from moto.utilities.utils import md5_hash

    bucket = backend.get_bucket(bucket_name)
    multipart = bucket.multiparts[multipart_id]
    parts = _listed_parts(multipart, body)
    md5s = b"".join(bytes.fromhex(part.etag.strip('"')) for part in parts)
    etag = f"{md5_hash(md5s).hexdigest()}-{len(parts)}"

    checksums = MultipartChecksumBuilder(
        multipart.metadata.get("x-amz-checksum-algorithm"), multipart.metadata.get("x-amz-checksum-type")
    )
    whole_object = _FullObjectChecksum(checksums.checksum_algorithm) if checksums.checksum_type != "COMPOSITE" else None
    encryption, kms_key_id = multipart.sse_encryption, multipart.kms_key_id
    if bucket.encryption:  # the bucket's default, as put_object applies it
        default = bucket.encryption["Rule"]["ApplyServerSideEncryptionByDefault"]
        encryption, kms_key_id = encryption or default["SSEAlgorithm"], kms_key_id or default.get("KMSMasterKeyID")
    key = FakeKey(
        name=multipart.key_name,
        bucket_name=bucket_name,
        value=b"",
        account_id=backend.account_id,
        region_name=backend.region_name,
        storage=multipart.storage,
        etag=etag,
        is_versioned=bucket.is_versioned,
        version_id=_new_version_id() if bucket.is_versioned else "null",
        multipart=multipart,
        encryption=encryption,
        kms_key_id=kms_key_id,
    )
    size = 0
    for part in parts:
        with part.lock:
            part._value_buffer.seek(0)
            if whole_object is None:  # a checksum per part, of the whole part (as moto computes it)
                checksums.addPart(part._value_buffer.read())
                part._value_buffer.seek(0)
            while chunk := part._value_buffer.read(_CHUNK):
                key._value_buffer.write(chunk)
                if whole_object is not None:
                    whole_object.update(chunk)
                size += len(chunk)
    key.contentsize = size
    key.set_metadata(multipart.metadata)
    algorithm = multipart.metadata.get("x-amz-checksum-algorithm")
    if whole_object is not None:
        checksum_details: tuple[str, str, int] = (checksums.checksum_type, whole_object.value(), 1)
    else:
        built = checksums.build()
        assert built is not None  # None only for a checksum type S3 does not have
        checksum_details = built
    key.checksum_algorithm = algorithm
    key.checksum_type, key.checksum_value, key.checksum_parts = checksum_details

    del bucket.multiparts[multipart_id]
    multipart.dispose()
    existing = bucket.keys.getlist(key.name, [])
    bucket.keys.setlist(key.name, [*existing, key] if bucket.is_versioned else [key])
    backend.put_object_tagging(key, multipart.tags)
    backend.put_object_acl(bucket_name=bucket_name, key_name=key.name, acl=multipart.acl, disable_notification=True)
    created = notifications.S3NotificationEvent.OBJECT_CREATED_COMPLETE_MULTIPART_UPLOAD_EVENT
    notifications.send_event(backend.account_id, created, bucket, key)
    return key


def _listed_parts(multipart: Any, body: Iterator[tuple[int, str]]) -> list[Any]:
    """The parts the request names, checked as S3 checks them."""
    from moto.s3.exceptions import EntityTooSmall, InvalidPart, MalformedXML
    from moto.settings import S3_UPLOAD_PART_MIN_SIZE

    parts: list[Any] = []
    for number, etag in body:
        part = multipart.parts.get(number)
        if part is None or part.etag.replace('"', "") != etag.replace('"', ""):
            raise InvalidPart()
        if parts and parts[-1].contentsize < S3_UPLOAD_PART_MIN_SIZE:
            raise EntityTooSmall()
        parts.append(part)
    if not parts:
        raise MalformedXML()
    return parts


def _new_version_id() -> str:
    from moto.moto_api._internal import mock_random

    return str(mock_random.uuid4())


class _FullObjectChecksum:
    """A full-object checksum computed as the bytes go by, with moto's choice of functions (and
    its stand-in, CRC32, where the library it would use is not installed)."""

    def __init__(self, algorithm: str) -> None:
        self._value, self._width = 0, 4
        self._step: Callable[[bytes, int], int] = binascii.crc32  # CRC32; S3 has no full-object SHAs
        library = {"CRC64NVME": ("awscrt.checksums", "crc64nvme"), "CRC32C": ("crc32c", "crc32c")}.get(algorithm)
        if library is not None:
            try:
                self._step = getattr(importlib.import_module(library[0]), library[1])
                self._width = 8 if algorithm == "CRC64NVME" else 4
            except ImportError:
                pass

    def update(self, data: bytes) -> None:
        self._value = self._step(data, self._value)

    def value(self) -> str:
        return base64.b64encode(self._value.to_bytes(self._width, "big")).decode()
