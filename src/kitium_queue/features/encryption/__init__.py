"""Payload encryption with key rotation (``EncryptionManager``); see ``docs/encryption.md``.

Needs the optional ``cryptography`` package: ``pip install 'kitium-job-queue[encryption]'``.
"""

from __future__ import annotations

from .crypto import (
    DecryptionError,
    EncryptionError,
    KeyConfig,
    KeyNotHeldError,
    KeyRecordDamagedError,
    generate_key,
)
from .manager import EncryptionManager
from .rotation import RotationStatus, RotationTarget

__all__ = [
    "DecryptionError",
    "EncryptionError",
    "EncryptionManager",
    "KeyConfig",
    "KeyNotHeldError",
    "KeyRecordDamagedError",
    "RotationStatus",
    "RotationTarget",
    "generate_key",
]
