"""The two ways stage 04 refuses: a merge that must not happen, and a result that fails its check."""

from __future__ import annotations


class MergeError(ValueError):
    """A merge that must not happen (incompatible models, unsupported adapter, existing output)."""


class MergeVerificationError(RuntimeError):
    """A merged model that does not equal what it was made from; the message carries the numbers."""
