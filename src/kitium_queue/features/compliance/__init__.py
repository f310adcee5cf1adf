"""Compliance: retention periods, redaction of named payload fields and erasure by
subject (``ComplianceManager``); see ``docs/compliance.md``."""

from __future__ import annotations

from .manager import FEATURE, ComplianceManager, ErasureReport, subject_digest
from .redaction import PathRedactor

__all__ = ["FEATURE", "ComplianceManager", "ErasureReport", "PathRedactor", "subject_digest"]
