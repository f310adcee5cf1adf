"""Payload and result compression: a codec (``codec.Codec``) that shrinks large values.

``CompressionCodec`` compresses an encoded value (job data, a result, progress) when it
is at least ``threshold`` bytes long, with zstd (the optional extra ``compression``:
``pip install "kitium-job-queue[compression]"``, or ``pip install -e ".[compression]"``
in a clone; it installs ``zstandard``) or, where
zstd is not installed, zlib from the standard library. A compressed value is stored
as a frame::

    b"\\x00kqz" + algorithm byte (b"s": zstd, b"z": zlib) + compressed bytes

JSON never starts with a NUL byte, so a reader tells a frame from a plain value by its
first bytes: values written before compression was enabled, below the threshold, or by
a process without the codec stay readable, mixed in any order (``decode`` passes
anything that is not a frame through unchanged). A value that does not get smaller is
stored as it is. A frame whose algorithm this process lacks (zstd without
``zstandard``) fails to decode with a message saying what to install.

The codec goes first in the queue's chain (``Serializer.add_codec(codec, first=True)``):
it compresses the JSON before any other codec sees it, and payload encryption, which
serializes through the same chain before it seals, compresses the plaintext before
encrypting it (ciphertext does not compress).

Decompression is bounded (``max_size``, default the largest payload limit): a damaged or
hostile frame cannot expand into more memory than that. So a value longer than
``max_size`` is never compressed (a frame of it could not be read back: the job was
accepted, then dead-lettered as undecodable); it is stored as it is, where the queue's
``max_payload_bytes`` applies to it as to any plain value. A frame is one compressed
stream and nothing after it: bytes past its end (a hand-made frame, two values run
together) make it damaged (``SerializationError``), never silently dropped; a job whose
data cannot be decoded fails as "undecodable payload" and is kept. Figures (``stats()``): values
seen, compressed, bytes before and after, per process.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, SerializationError, install_hint
from ..options import MAX_PAYLOAD_LIMIT, to_int

__all__ = ["ALGORITHMS", "MAGIC", "CompressionCodec", "CompressionStats", "zstd_available"]

#: The frame's opening bytes (a NUL first: no JSON text starts with it).
MAGIC = b"\x00kqz"
_ZSTD, _ZLIB = b"s", b"z"
#: Accepted values of ``algorithm``: ``auto`` picks zstd when installed, else zlib.
ALGORITHMS = ("auto", "zstd", "zlib")
_INSTALL = install_hint("compression", "zstandard")


def zstd_available() -> bool:
    """Whether the ``zstandard`` package can be imported here."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class CompressionStats:
    """What the codec did in this process since it was made.

    ``seen``: values encoded; ``compressed``: those stored compressed; ``bytes_in`` /
    ``bytes_out``: their sizes before and after (all values, compressed or not);
    ``ratio``: ``bytes_out / bytes_in`` (1.0 when nothing was seen).
    """

    algorithm: str
    threshold: int
    seen: int
    compressed: int
    bytes_in: int
    bytes_out: int

    @property
    def ratio(self) -> float:
        return self.bytes_out / self.bytes_in if self.bytes_in else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "threshold": self.threshold,
            "seen": self.seen,
            "compressed": self.compressed,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "ratio": round(self.ratio, 4),
        }


class CompressionCodec:
    """Compress encoded values of at least ``threshold`` bytes (see the module docstring).

    Args:
        algorithm: ``"auto"`` (zstd when ``zstandard`` is installed, else zlib),
            ``"zstd"`` (refused with what to install when it is missing) or ``"zlib"``.
        threshold: smallest value compressed, in bytes (default 1024; smaller values
            rarely shrink enough to pay for the CPU).
        level: compression level (zstd 1..22, default 3; zlib 1..9, default 6).
        max_size: largest decompressed value accepted (default 256 MiB); longer values
            are stored uncompressed.
    """

    def __init__(
        self,
        *,
        algorithm: str = "auto",
        threshold: int = 1024,
        level: int | None = None,
        max_size: int = MAX_PAYLOAD_LIMIT,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"compression algorithm must be one of {', '.join(ALGORITHMS)}, "
                f"got {algorithm!r:.60}"
            )
        have_zstd = zstd_available()
        if algorithm == "zstd" and not have_zstd:
            raise ConfigurationError(f"compression algorithm 'zstd' needs zstandard: {_INSTALL}")
        self.algorithm = (
            "zstd" if algorithm == "zstd" or (algorithm == "auto" and have_zstd) else "zlib"
        )
        self.threshold = to_int(
            threshold, "compression threshold", minimum=1, maximum=MAX_PAYLOAD_LIMIT
        )
        hi = 22 if self.algorithm == "zstd" else 9
        default = 3 if self.algorithm == "zstd" else 6
        self.level = to_int(
            default if level is None else level,
            f"{self.algorithm} compression level",
            minimum=1,
            maximum=hi,
        )
        self.max_size = to_int(
            max_size, "compression max_size", minimum=1, maximum=MAX_PAYLOAD_LIMIT
        )
        self._tag = _ZSTD if self.algorithm == "zstd" else _ZLIB
        self._local = threading.local()  # zstd contexts are not shared between threads
        self._lock = threading.Lock()
        self._seen = self._compressed = self._in = self._out = 0

    def __repr__(self) -> str:
        return (
            f"CompressionCodec(algorithm={self.algorithm!r}, threshold={self.threshold}, "
            f"level={self.level})"
        )

    # ------------------------------------------------------------------ codec
    def encode(self, data: bytes) -> bytes:
        """``data`` as a frame when it is long enough and shrinks (and no longer than
        ``max_size``, which ``decode`` would refuse), else as it is."""
        n = len(data)
        out = data
        if self.threshold <= n <= self.max_size:
            packed = self._compress(data)
            if len(packed) + len(MAGIC) + 1 < n:
                out = MAGIC + self._tag + packed
        with self._lock:
            self._seen += 1
            self._in += n
            self._out += len(out)
            if out is not data:
                self._compressed += 1
        return out

    def decode(self, data: bytes) -> bytes:
        """The original bytes of a frame; anything else unchanged."""
        if data[:4] != MAGIC or len(data) < 5:
            return data
        tag, body = data[4:5], data[5:]
        if tag == _ZSTD:
            return self._unzstd(body)
        if tag == _ZLIB:
            return self._unzlib(body)
        raise SerializationError(f"compressed value has an unknown algorithm byte {tag!r}")

    def stats(self) -> CompressionStats:
        """What this codec did in this process (``CompressionStats``)."""
        with self._lock:
            return CompressionStats(
                self.algorithm,
                self.threshold,
                self._seen,
                self._compressed,
                self._in,
                self._out,
            )

    # ------------------------------------------------------------------ algorithms
    def _compress(self, data: bytes) -> bytes:
        if self._tag == _ZLIB:
            return zlib.compress(data, self.level)
        comp = getattr(self._local, "comp", None)
        if comp is None:
            import zstandard

            comp = self._local.comp = zstandard.ZstdCompressor(level=self.level)
        out: bytes = comp.compress(data)
        return out

    def _unzstd(self, body: bytes) -> bytes:
        try:
            import zstandard
        except ImportError:
            raise SerializationError(
                f"stored value is zstd-compressed and this process cannot read it: {_INSTALL}"
            ) from None
        dec = getattr(self._local, "dec", None)
        if dec is None:
            dec = self._local.dec = zstandard.ZstdDecompressor()
        try:
            size = zstandard.frame_content_size(body)
            if size < 0 or size > self.max_size:
                raise SerializationError(
                    f"compressed value declares {size} bytes, above the limit of {self.max_size}"
                    if size > self.max_size
                    else "compressed value does not declare its size"
                )
            # One frame, read to its end: its declared size (checked above) bounds the
            # output, and what follows the frame is seen (decompress ignores it).
            obj = dec.decompressobj()
            out: bytes = obj.decompress(body)
        except zstandard.ZstdError as exc:
            raise SerializationError(f"compressed value is damaged (zstd: {exc})") from None
        if not obj.eof:
            raise SerializationError("compressed value is truncated (zstd)")
        _no_trailing(obj.unused_data, "zstd")
        if len(out) > self.max_size:
            raise SerializationError(
                f"compressed value expands beyond the limit of {self.max_size} bytes"
            )
        return out

    def _unzlib(self, body: bytes) -> bytes:
        d = zlib.decompressobj()
        try:
            out = d.decompress(body, self.max_size)
        except zlib.error as exc:
            raise SerializationError(f"compressed value is damaged (zlib: {exc})") from None
        if d.unconsumed_tail:
            raise SerializationError(
                f"compressed value expands beyond the limit of {self.max_size} bytes"
            )
        if not d.eof:
            raise SerializationError("compressed value is truncated (zlib)")
        _no_trailing(d.unused_data, "zlib")
        return out


def _no_trailing(rest: bytes, algorithm: str) -> None:
    """A frame is one compressed stream and nothing after it: bytes past its end mean
    the value was not written by this codec (damaged, or two values run together)."""
    if rest:
        raise SerializationError(
            f"compressed value is damaged ({algorithm}): {len(rest)} bytes follow the end "
            "of its compressed data; the value was not written by kitium-queue's codec "
            "(restore the job's data or remove the job)"
        )
