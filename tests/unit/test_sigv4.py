"""Our presigned S3 GETs are exactly botocore's (same inputs, same moment)."""

from __future__ import annotations

import datetime
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from lorafleet_operator.storage.sigv4 import Credentials, ObjectUrlSigner


@pytest.mark.parametrize(
    ("bucket_url", "key", "token"),
    [
        ("http://127.0.0.1:9000/adapters/", "loras/support-v2/adapter_config.json", None),
        ("https://adapters.s3.eu-west-1.amazonaws.com/", "loras/bad:name/a b+c.json", "tok/en="),
        ("https://s3.amazonaws.com/my.bucket/", "x/ünïcode~_-.json", None),
    ],
)
def test_signature_matches_botocore(bucket_url: str, key: str, token: str | None) -> None:
    request = AWSRequest(method="GET", url=bucket_url + quote(key, safe="/~"))
    S3SigV4QueryAuth(
        BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        "s3",
        "eu-west-1",
        expires=300,
    ).add_auth(request)
    theirs = urlsplit(request.url)
    their_query = dict(parse_qsl(theirs.query))
    moment = datetime.datetime.strptime(their_query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.UTC
    )
    ours = urlsplit(
        ObjectUrlSigner(bucket_url, "eu-west-1").sign_get(
            key,
            Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
            moment,
            300,
        )
    )
    assert (ours.scheme, ours.netloc, ours.path) == (theirs.scheme, theirs.netloc, theirs.path)
    assert dict(parse_qsl(ours.query)) == their_query
