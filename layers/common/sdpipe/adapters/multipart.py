"""S3 multipart uploads: create, presign parts, list, upload, complete, abort."""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import THROTTLING_CODES, error_code
from sdpipe.adapters.object_store import BucketAdapter
from sdpipe.errors import Throttled, UploadNotFound


@dataclass(frozen=True)
class HeldPart:
    """A part S3 holds of a multipart upload."""

    size: int
    etag: str


class MultipartUploads(BucketAdapter):
    def create(self, key: str, metadata: dict[str, str], content_type: str = "application/octet-stream") -> str:
        response = self._s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=metadata, ContentType=content_type
        )
        return str(response["UploadId"])

    def presign_part(self, key: str, upload_id: str, part: int, expires_seconds: int) -> str:
        """A URL a client PUTs the part to (sending Content-MD5, which S3 verifies)."""
        return str(
            self._aws.get_presigner("s3").generate_presigned_url(
                "upload_part",
                Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part},
                ExpiresIn=expires_seconds,
                HttpMethod="PUT",
            )
        )

    def list_parts(self, key: str, upload_id: str) -> dict[int, HeldPart]:
        """Parts S3 holds, by number; ``UploadNotFound`` once the upload is gone."""
        parts: dict[int, HeldPart] = {}
        marker = 0
        while True:
            try:
                response = self._s3.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker, MaxParts=1000
                )
            except ClientError as exc:
                raise self._translate(exc, key) from exc
            for part in response.get("Parts", []):
                parts[int(part["PartNumber"])] = HeldPart(size=int(part["Size"]), etag=str(part["ETag"]).strip('"'))
            if not response.get("IsTruncated"):
                return parts
            marker = int(response["NextPartNumberMarker"])

    def upload_part(self, key: str, upload_id: str, part: int, body: bytes | bytearray) -> str:
        try:
            response = self._s3.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part,
                Body=body,
                # S3 checks the part against its CRC32 (BadDigest otherwise); a Content-MD5 on top
                # would hash every byte three more times, here and at the far end, for no more safety.
                ChecksumAlgorithm="CRC32",
            )
        except ClientError as exc:
            raise self._translate(exc, key) from exc
        return str(response["ETag"]).strip('"')

    def complete(self, key: str, upload_id: str, etags: dict[int, str]) -> str:
        parts = [{"PartNumber": n, "ETag": f'"{etags[n]}"'} for n in sorted(etags)]
        try:
            response = self._aws.get_patient("s3").complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except ClientError as exc:
            raise self._translate(exc, key) from exc
        return str(response["ETag"]).strip('"')

    def abort(self, key: str, upload_id: str) -> bool:
        """Abort; False when there was nothing to abort (completed or aborted already)."""
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                return False
            raise self._translate(exc, key) from exc
        return True

    def _translate(self, exc: ClientError, key: str) -> Exception:
        code = error_code(exc)
        if code in ("NoSuchUpload", "404"):
            return UploadNotFound(f"the multipart upload of {key} no longer exists (completed, aborted or expired)")
        if code in THROTTLING_CODES or code == "503":
            return Throttled(f"S3 throttled the upload of {key}: {code}")
        return exc
