"""The cryptography of payload encryption: keys, the two algorithms, the envelope, AAD.

Keys come from the application (an argument, an environment variable, a file) and stay
in the process: nothing here writes to Redis or logs. A ``KeyConfig`` never shows its key
material in ``repr`` or ``str``.

Every 32-byte master key is used through subkeys derived with HKDF-SHA256 (``info``
naming the algorithm and the purpose), so the same master key used with both algorithms
shares nothing, and CBC's encryption and MAC keys are distinct:

* ``aes-256-gcm``: a random 96-bit nonce per message; ``ct`` = nonce ‖ ciphertext ‖ tag
  (16 bytes); the AAD is authenticated by GCM itself.
* ``aes-256-cbc``: a random 128-bit IV, PKCS#7 padding, then HMAC-SHA256 over
  ``len(aad)`` (8 bytes, big endian) ‖ aad ‖ iv ‖ ciphertext (encrypt-then-MAC); ``ct`` =
  iv ‖ ciphertext ‖ tag (32 bytes). The tag is checked (in constant time) before
  anything is decrypted.

The envelope (what is stored instead of the plaintext) is a JSON object::

    {"kqe": 1, "kid": "<key id>", "alg": "aes-256-gcm", "for": "job", "ct": "<base64>"}

``for`` says what the ciphertext is bound to: ``job`` (a job's id), ``schedule`` (a
schedule's id: the jobs it enqueues carry ids ``sched:<id>:<tick>``) or ``value``
(``EncryptionManager.encrypt``). The AAD is built from the envelope's version, key id,
algorithm and ``for``, and the binding: queue, owner id, job name and part (``data`` or
``result``), each length-prefixed. Moving a ciphertext to another job, queue, name or
field, or editing any envelope field, makes decryption fail.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256
from pathlib import Path
from typing import Any

from ...enums import EncryptionAlgorithm
from ...errors import ConfigurationError, KitiumQueueError, install_hint
from ...options import MAX_PAYLOAD_LIMIT

__all__ = [
    "ENVELOPE_VERSION",
    "Binding",
    "DecryptionError",
    "EncryptionError",
    "KeyConfig",
    "KeyMismatchError",
    "KeyNotHeldError",
    "KeyRecordDamagedError",
    "KeyRing",
    "generate_key",
    "is_envelope",
]

#: Version of the envelope format (field ``kqe``).
ENVELOPE_VERSION = 1
#: Longest key id; ids are letters, digits and ``. _ -`` (they go into Redis and logs).
MAX_KEY_ID = 64
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_GCM, _CBC = EncryptionAlgorithm.AES_256_GCM.value, EncryptionAlgorithm.AES_256_CBC.value
_ALGORITHMS = ALGORITHMS = (_GCM, _CBC)
_SCOPES = ("job", "schedule", "value")
#: Longest plaintext sealed, and longest base64 text opened (longer is refused before
#: decoding): the base64 of the largest value a queue stores (``MAX_PAYLOAD_LIMIT``), so
#: whatever ``seal`` accepted opens again.
_MAX_PLAIN = MAX_PAYLOAD_LIMIT
_MAX_CT = (MAX_PAYLOAD_LIMIT + 64 + 2) // 3 * 4


class EncryptionError(KitiumQueueError):
    """Payload encryption failed (no usable key, a value that cannot be encrypted)."""


class DecryptionError(EncryptionError):
    """A ciphertext cannot be opened: unknown key, wrong binding, tampered or malformed.

    The message names the reason and the key id, never the plaintext or key material.
    """


class KeyRecordDamagedError(EncryptionError):
    """A record of the queue's keys in Redis (``<prefix>enc``: the current key id;
    ``<prefix>enc:keys``: the key ids) was damaged, by hand or by another client: it
    holds another Redis type, or a current key id that is not one. Nothing is encrypted
    until it is repaired (the message says how); a worker defers encrypted jobs
    meanwhile, without spending an attempt. Never raised for the key material, which
    Redis never holds.

    Attributes:
        key: the damaged Redis key.
    """

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class KeyNotHeldError(DecryptionError):
    """This process does not hold a key it needs: the key a ciphertext names, or the
    queue's current key (to seal). Unlike a tampered or moved ciphertext, another
    process may hold it (a rolling deploy of a new key): a worker defers such a job
    for ``missing_key_wait_ms`` before it dead-letters it.

    Attributes:
        key_id: the id of the key this process lacks.
    """

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class KeyMismatchError(KeyNotHeldError):
    """This process holds a key under the id a ciphertext (or the queue's current key)
    names, but with other material than the key recorded under that id for the queue
    (its check value in ``<prefix>enc:check``): a wrong secret is configured here (or
    was, in the process that recorded it). It is handled as a key this process does not
    hold: nothing is sealed with it here, and a worker defers the jobs under it for a
    process holding the right key, instead of dead-lettering them as tampered.
    """


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded (what ``KeyConfig.key`` takes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


_B64_TEXT = re.compile(rb"[A-Za-z0-9+/=_-]+")


def is_key_id(value: Any) -> bool:
    """Whether ``value`` is a well-formed key id (see ``check_key_id``)."""
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


def check_key_id(value: Any) -> str:
    """A key id: 1 to 64 letters, digits, ``.``, ``_`` or ``-``, starting alphanumeric."""
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        got = (
            "a value that looks like key material (not quoted): are key_id and key swapped?"
            if _looks_like_key(value)
            else f"{value!r:.80}"
        )
        raise ConfigurationError(
            f"key_id must be 1 to {MAX_KEY_ID} letters, digits, '.', '_' or '-' (starting "
            f"with a letter or digit), got {got}"
        )
    return value


def _looks_like_key(value: Any) -> bool:
    """Whether ``value`` could be key material (32 bytes, or their base64), which an
    error message must not quote."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 32:
            return True
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str) or len(value) > 200:
        return False
    text = value.strip()
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            if len(decode(text + "=" * (-len(text) % 4))) == 32:
                return True
        except (binascii.Error, ValueError):
            continue
    return False


def check_algorithm(value: Any) -> str:
    """``aes-256-gcm`` or ``aes-256-cbc`` (an ``EncryptionAlgorithm`` or its value)."""
    try:
        return EncryptionAlgorithm(value).value
    except ValueError:
        raise ConfigurationError(
            f"algorithm must be one of {', '.join(_ALGORITHMS)}, got {value!r:.80}"
        ) from None


def _decode_key(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        if _B64_TEXT.fullmatch(bytes(value)):
            # Random key bytes are never all base64 characters (a chance of about
            # 1e-19): this is text, maybe the base64 of a key of the wrong size.
            raise ConfigurationError(
                "key is 32 bytes of base64 text, not 32 random bytes: pass base64 text as "
                "a str (it must decode to 32 bytes), or the raw key as 32 random bytes"
            )
        return bytes(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str):
        raise ConfigurationError(
            f"key must be 32 bytes given as base64 text, got a {type(value).__name__}"
        )
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        # The value is key material: it is never quoted in the message.
        raise ConfigurationError(
            "key is not valid base64; generate one with "
            "kitium_queue.features.encryption.generate_key()"
        ) from None
    if len(raw) != 32:
        raise ConfigurationError(
            f"key must decode to 32 bytes (AES-256), got {len(raw)}; generate one with "
            "kitium_queue.features.encryption.generate_key()"
        )
    return raw


@dataclass(frozen=True)
class KeyConfig:
    """One key: ``key_id``, ``key`` (32 bytes, base64) and ``algorithm``.

    ``repr`` and ``str`` never show the key. Build one directly, or read the key from an
    environment variable (``from_env``) or a file (``from_file``).
    """

    key_id: str
    key: str | bytes = field(repr=False)
    algorithm: EncryptionAlgorithm | str = EncryptionAlgorithm.AES_256_GCM

    @classmethod
    def coerce(cls, value: KeyConfig | Mapping[str, Any]) -> KeyConfig:
        """A ``KeyConfig`` from itself or a mapping with ``key_id``, ``key``, ``algorithm``."""
        if isinstance(value, KeyConfig):
            return value
        if isinstance(value, Mapping):
            extra = sorted(set(value) - {"key_id", "key", "algorithm"})
            if extra or "key_id" not in value or "key" not in value:
                raise ConfigurationError(
                    "a key config needs key_id and key (and optionally algorithm); "
                    f"unknown: {extra}"
                    if extra
                    else "a key config needs key_id and key"
                )
            return cls(
                value["key_id"],
                value["key"],
                value.get("algorithm", EncryptionAlgorithm.AES_256_GCM),
            )
        raise ConfigurationError(
            f"a key config must be a KeyConfig or a dict, got {type(value).__name__}"
        )

    @classmethod
    def from_env(
        cls,
        variable: str,
        key_id: str,
        algorithm: EncryptionAlgorithm | str = EncryptionAlgorithm.AES_256_GCM,
    ) -> KeyConfig:
        """The key held (base64) in environment variable ``variable``."""
        value = os.environ.get(variable)
        if not value:
            raise ConfigurationError(
                f"environment variable {variable!r} is not set or empty; it must hold the "
                f"base64 key of key id {key_id!r}"
            )
        return cls(key_id, value, algorithm)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        key_id: str,
        algorithm: EncryptionAlgorithm | str = EncryptionAlgorithm.AES_256_GCM,
    ) -> KeyConfig:
        """The key held (base64, surrounding whitespace ignored) in the file ``path``
        (a mounted secret, for instance)."""
        try:
            text = Path(path).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"cannot read the key of key id {key_id!r} from {os.fspath(path)!r}: "
                f"{type(exc).__name__}"
            ) from None
        return cls(key_id, text, algorithm)


@dataclass(frozen=True, slots=True)
class Binding:
    """What a ciphertext is bound to (part of its AAD).

    ``scope``: ``job``, ``schedule`` or ``value``; ``owner``: the job id, schedule id or
    caller's context; ``name``: the job name; ``part``: ``data`` or ``result``.
    """

    scope: str
    queue: str
    owner: str
    name: str
    part: str

    def aad(self, version: int, key_id: str, algorithm: str) -> bytes:
        """The authenticated data: every field length-prefixed (4 bytes, big endian)."""
        return _aad_head(version, key_id, algorithm, self.scope, self.queue) + _packed(
            self.owner, self.name, self.part
        )


def _packed(*items: str) -> bytes:
    out = b""
    for item in items:
        b = item.encode("utf-8", "surrogatepass")
        out += struct.pack(">I", len(b)) + b
    return out


@lru_cache(maxsize=256)
def _aad_head(version: int, key_id: str, algorithm: str, scope: str, queue: str) -> bytes:
    return b"kitium-queue/payload" + _packed(str(version), key_id, algorithm, scope, queue)


class _Key:
    """Derived subkeys of one master key (never leaves this module)."""

    __slots__ = ("aead", "algorithm", "check", "enc", "key_id", "mac")

    def __init__(self, key_id: str, master: bytes, algorithm: str) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        def derive(purpose: str) -> bytes:
            return HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=f"kitium-queue {algorithm} {purpose}".encode(),
            ).derive(master)

        self.key_id = key_id
        self.algorithm = algorithm
        self.enc = derive("enc")
        self.mac = derive("mac") if algorithm == _CBC else b""
        # What Redis records of the key (``<prefix>enc:check``) to tell a process holding
        # other material under the same id: an HKDF output of its own, which reveals
        # nothing of the key or of the other subkeys.
        self.check = derive("key-check")[:16].hex()
        self.aead = AESGCM(self.enc) if algorithm == _GCM else None


def _cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "payload encryption needs the 'cryptography' package: " + install_hint("encryption")
        ) from None


class KeyRing:
    """The keys this process holds, by id. Thread-safe for reading once filled."""

    def __init__(self) -> None:
        _cryptography()
        self._keys: dict[str, _Key] = {}
        self._fingerprints: dict[str, str] = {}
        #: Ids held here with other material than the queue records (``KeyMismatchError``).
        self.mismatched: frozenset[str] = frozenset()

    def add(self, config: KeyConfig | Mapping[str, Any]) -> str:
        """Add a key; returns its id. Adding the same id again with other material is
        an error (ids name keys for good: a ciphertext says which one it needs)."""
        cfg = KeyConfig.coerce(config)
        key_id = check_key_id(cfg.key_id)
        algorithm = check_algorithm(cfg.algorithm)
        master = _decode_key(cfg.key)
        # A fingerprint to tell "the same key again" from "another key, same id"; kept
        # in memory only.
        fp = sha256(b"kq-fp" + algorithm.encode() + master).hexdigest()
        cur = self._fingerprints.get(key_id)
        if cur is not None and cur != fp:
            raise ConfigurationError(
                f"key id {key_id!r} is already held with other key material or another "
                "algorithm; key ids name one key for good: give the new key a new id"
            )
        self._keys[key_id] = _Key(key_id, master, algorithm)
        self._fingerprints[key_id] = fp
        return key_id

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def algorithm(self, key_id: str) -> str:
        return self._keys[key_id].algorithm

    def check_value(self, key_id: str) -> str:
        """The check value of held key ``key_id`` (hex; recorded in Redis, revealing
        nothing of the key): equal in every process holding the same key."""
        return self._keys[key_id].check

    def mismatch_error(self, key_id: str) -> KeyMismatchError:
        """The error for held key ``key_id`` whose material differs from the record."""
        return KeyMismatchError(
            f"this process holds key {key_id!r} with other material than the key recorded "
            "under that id for the queue (its check value differs): a wrong secret is "
            "configured for it here, or was in the process that recorded it (docs/"
            "encryption.md, 'A key id held with other material')",
            key_id,
        )

    # ------------------------------------------------------------------ seal / open
    def seal(self, plaintext: bytes, key_id: str, binding: Binding) -> dict[str, Any]:
        """The envelope of ``plaintext`` under key ``key_id``, bound to ``binding``."""
        key = self._keys.get(key_id)
        if key is None:
            raise EncryptionError(
                f"key {key_id!r} is not held by this process; add it with add_key()"
            )
        if key_id in self.mismatched:
            raise self.mismatch_error(key_id)
        if len(plaintext) > _MAX_PLAIN:
            raise EncryptionError(
                f"value is {len(plaintext)} bytes serialized, above the {_MAX_PLAIN} bytes "
                "one ciphertext holds"
            )
        aad = binding.aad(ENVELOPE_VERSION, key_id, key.algorithm)
        if key.aead is not None:
            nonce = os.urandom(12)
            ct = nonce + key.aead.encrypt(nonce, plaintext, aad)
        else:
            ct = _cbc_seal(key, plaintext, aad)
        return {
            "kqe": ENVELOPE_VERSION,
            "kid": key_id,
            "alg": key.algorithm,
            "for": binding.scope,
            "ct": binascii.b2a_base64(ct, newline=False).decode(),
        }

    def open(self, envelope: Any, binding: Binding) -> bytes:
        """The plaintext of ``envelope``; ``DecryptionError`` saying why it cannot be."""
        version, key_id, algorithm, scope, ct = parse_envelope(envelope)
        if scope != binding.scope:
            raise DecryptionError(
                f"ciphertext is bound to a {scope}, not to a {binding.scope}: it was moved"
            )
        key = self._keys.get(key_id)
        if key is None:
            if not _KEY_ID.fullmatch(key_id):
                raise DecryptionError("envelope key id is malformed")
            raise KeyNotHeldError(
                f"ciphertext needs key {key_id!r}, which this process does not hold "
                "(add it with add_key)",
                key_id,
            )
        if key_id in self.mismatched:
            raise self.mismatch_error(key_id)
        if key.algorithm != algorithm:
            raise DecryptionError(
                f"ciphertext claims algorithm {algorithm} but key {key_id!r} is "
                f"{key.algorithm}: the envelope was altered"
            )
        aad = binding.aad(version, key_id, algorithm)
        if key.aead is not None:
            from cryptography.exceptions import InvalidTag

            if len(ct) < 12 + 16:
                raise DecryptionError(f"ciphertext under key {key_id!r} is truncated")
            try:
                return key.aead.decrypt(ct[:12], ct[12:], aad)
            except InvalidTag:
                raise DecryptionError(_TAMPERED.format(key_id=key_id)) from None
        return _cbc_open(key, ct, aad)


_TAMPERED = (
    "ciphertext under key {key_id!r} failed authentication: it was altered, or moved "
    "from another job, queue, name or field"
)


def _cbc_seal(key: _Key, plaintext: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key.enc), modes.CBC(iv)).encryptor()
    body = iv + enc.update(padded) + enc.finalize()
    tag = hmac.new(key.mac, struct.pack(">Q", len(aad)) + aad + body, sha256).digest()
    return body + tag


def _cbc_open(key: _Key, ct: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(ct) < 16 + 16 + 32 or (len(ct) - 32) % 16:
        raise DecryptionError(f"ciphertext under key {key.key_id!r} is truncated")
    body, tag = ct[:-32], ct[-32:]
    want = hmac.new(key.mac, struct.pack(">Q", len(aad)) + aad + body, sha256).digest()
    if not hmac.compare_digest(want, tag):
        raise DecryptionError(_TAMPERED.format(key_id=key.key_id))
    dec = Cipher(algorithms.AES(key.enc), modes.CBC(body[:16])).decryptor()
    padded = dec.update(body[16:]) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:  # authenticated, so only a bug or a forged MAC key gets here
        raise DecryptionError(_TAMPERED.format(key_id=key.key_id)) from None


def is_envelope(value: Any) -> bool:
    """Whether ``value`` has the shape of an envelope (not whether it opens)."""
    return isinstance(value, dict) and "kqe" in value and "ct" in value


def parse_envelope(envelope: Any) -> tuple[int, str, str, str, bytes]:
    """``(version, key id, algorithm, scope, ciphertext)`` of an envelope, checked."""
    if not is_envelope(envelope):
        raise DecryptionError("value is not an encrypted envelope (kqe/kid/alg/for/ct)")
    version, key_id, alg = envelope.get("kqe"), envelope.get("kid"), envelope.get("alg")
    scope, text = envelope.get("for"), envelope.get("ct")
    if version != ENVELOPE_VERSION or type(version) is not int:
        raise DecryptionError(f"unsupported envelope version {version!r:.20}")
    if not isinstance(key_id, str) or not (0 < len(key_id) <= MAX_KEY_ID):
        raise DecryptionError("envelope key id is missing or malformed")
    if alg not in _ALGORITHMS:
        raise DecryptionError(f"envelope names an unknown algorithm {alg!r:.40}")
    if scope not in _SCOPES:
        raise DecryptionError(f"envelope names an unknown binding {scope!r:.40}")
    if not isinstance(text, str) or len(text) > _MAX_CT:
        raise DecryptionError("envelope ciphertext is missing or too large")
    try:
        # Not strict: whatever the decoder skips, the ciphertext is authenticated.
        ct = binascii.a2b_base64(text)
    except (binascii.Error, ValueError):
        raise DecryptionError("envelope ciphertext is not valid base64") from None
    return version, key_id, alg, scope, ct


def envelope_key_id(value: Any) -> str | None:
    """The key id an envelope names (None when ``value`` is not one)."""
    if is_envelope(value) and isinstance(value.get("kid"), str):
        return str(value["kid"])
    return None
