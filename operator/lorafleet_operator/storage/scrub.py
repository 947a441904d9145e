"""Keep credentials out of messages that go to status, Events and logs.

SDK error texts sometimes echo what was sent: an access key id in "InvalidAccessKeyId",
a presigned URL with its signature, a token in a header dump. Every storage error message
passes through :func:`scrub` before it leaves the storage layer."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "<redacted>"

_PATTERNS: Final = (
    # AWS access key ids (long-term AKIA…, temporary ASIA…).
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b"),
    # Signatures, credentials and tokens in query strings and headers.
    re.compile(
        r"(?i)((?:x-amz-(?:signature|credential|security-token)|signature|awsaccesskeyid|"
        r"access_token|token|password|secret)[=:]\s*)[^\s&\"',;]+"
    ),
    re.compile(r"(?i)(authorization:\s*)[^\n]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # PEM private keys (a GCS service-account JSON quoted in an error).
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
)

# Secret values shorter than this are not searched for: replacing "a" everywhere would make
# messages unreadable and a one-letter secret is no secret.
_MIN_SECRET_LENGTH: Final = 4


def scrub(message: str, secrets: Iterable[str] = ()) -> str:
    """``message`` with known secret values and credential-shaped strings replaced."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len)[::-1]:
        message = message.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        message = pattern.sub(
            lambda m: (m.group(1) if m.re.groups else "") + REDACTED,
            message,
        )
    return message
