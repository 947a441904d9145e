"""The storage SDK-bound half of ``lorafleet_api.storage``: what a google-cloud-storage
exception means, and a GCS client's arguments for a catalog. Each SDK is imported inside the
function that needs it, so importing this module costs nothing (a unit test holds it to that)."""

from __future__ import annotations

from typing import Any

from lorafleet_api.storage import (
    ACCESS_DENIED,
    NOT_FOUND,
    UNREACHABLE,
    CredentialsError,
    StorageCredentials,
)


def gcs_error_reason(err: BaseException) -> str | None:
    """The reason a google-cloud-storage / google-auth exception means; None for a bug."""
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(err, api_exceptions.Unauthorized | api_exceptions.Forbidden):
        return ACCESS_DENIED
    if isinstance(err, api_exceptions.NotFound):
        return NOT_FOUND
    if isinstance(err, auth_exceptions.RefreshError | auth_exceptions.DefaultCredentialsError):
        return ACCESS_DENIED
    if isinstance(
        err,
        api_exceptions.GoogleAPIError
        | requests.exceptions.RequestException
        | auth_exceptions.TransportError
        | OSError,  # connection resets and timeouts while a blob streams
    ):
        return UNREACHABLE
    return None


def gcs_service_account_credentials(credentials: StorageCredentials) -> dict[str, Any]:
    """``google.cloud.storage.Client`` keyword arguments from the Secret's service-account
    key: credentials and project."""
    from google.oauth2 import service_account

    info = credentials.gcs_service_account()
    try:
        from_info: Any = service_account.Credentials.from_service_account_info
        key = from_info(info)
    except (ValueError, KeyError):
        raise CredentialsError(
            f"Secret {credentials.secret_name}: not a service-account key"
        ) from None
    return {"credentials": key, "project": info.get("project_id")}


def gcs_client_kwargs(
    endpoint: str | None, credentials: StorageCredentials | None
) -> dict[str, Any]:
    """``google.cloud.storage.Client`` keyword arguments for a catalog.

    - A Secret: its service-account key (never replaced by other credentials).
    - No Secret and no endpoint: the standard chain (Workload Identity, ADC, or
      STORAGE_EMULATOR_HOST, which the SDK honours itself).
    - No Secret and an endpoint: anonymous. ``source.endpoint`` names an emulator or a
      public GCS-compatible server; looking up default credentials there would probe the
      GCE metadata server of whatever machine runs us. Raises CredentialsError when the
      Secret does not fit."""
    kwargs: dict[str, Any] = {}
    if endpoint:
        from google.api_core.client_options import ClientOptions

        kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
    if credentials is not None:
        kwargs.update(gcs_service_account_credentials(credentials))
    elif endpoint:
        from google.auth.credentials import AnonymousCredentials

        anonymous: Any = AnonymousCredentials
        kwargs.update(credentials=anonymous(), project="lorafleet")
    return kwargs
