"""The config package's seams: what it keeps of the drivers' knowledge stays in step with
the drivers (config may not import them, so a test has to)."""

from __future__ import annotations

from registry.config.params import S3_STRING_PARAMS
from registry.drivers.s3.params import KNOWN as S3_KNOWN


def test_s3_string_params_are_s3_options() -> None:
    """Every parameter config keeps as text under storage.s3 is one the S3 driver reads."""
    assert S3_STRING_PARAMS <= S3_KNOWN, sorted(S3_STRING_PARAMS - S3_KNOWN)
