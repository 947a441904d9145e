"""One interface over S3, GCS and local folders.

The SDKs (boto3, google-cloud-storage) block, so every call runs in the storage's own thread
pool, sized to the fetch concurrency: the event loop (and with it every other kopf handler)
never waits on the network. Errors leave this layer as :class:`StorageError` subclasses with
scrubbed messages, whatever the SDK raised."""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from lorafleet_operator.adapters import StoredObject
from lorafleet_operator.errors import StorageError, StorageNotFoundError
from lorafleet_operator.model.adaptercatalog import StorageLocation
from lorafleet_operator.storage.scrub import scrub

T = TypeVar("T")

DEFAULT_CONCURRENCY = 32


class AdapterStorage(abc.ABC):
    """List a catalog's folder recursively and read small objects from it."""

    def __init__(
        self,
        location: StorageLocation,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        secrets: Iterable[str] = (),
    ) -> None:
        self.location = location
        self.concurrency = concurrency
        self._secrets = tuple(secrets)
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"storage-{location.scheme}"
        )

    # ------------------------------------------------------------ what each backend provides
    @abc.abstractmethod
    def _list_blocking(self) -> list[StoredObject]:
        """Every object under the prefix, keys relative to it (all pages)."""

    @abc.abstractmethod
    def _read_blocking(self, key: str, max_bytes: int) -> bytes:
        """The object at ``key`` (relative to the prefix); NotFound when it is gone."""

    @abc.abstractmethod
    def _classify(self, err: Exception) -> StorageError | None:
        """The StorageError an SDK exception means, or None for a bug (re-raised as is)."""

    # ------------------------------------------------------------ the interface
    async def list_objects(self) -> list[StoredObject]:
        return await self._run(self._list_blocking)

    async def read(self, key: str, max_bytes: int) -> bytes:
        return await self._run(self._read_blocking, key, max_bytes)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> str:
        return self.location.uri

    # ------------------------------------------------------------ plumbing
    async def _run(self, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(func, *args))
        except StorageError as err:
            raise type(err)(self.scrub(err.message), reason=err.reason) from None
        except Exception as err:
            classified = self._classify(err)
            if classified is None:
                raise
            # `from None`: the SDK exception (and its request dump) must not reach a log.
            raise type(classified)(
                self.scrub(classified.message), reason=classified.reason
            ) from None

    def scrub(self, message: str) -> str:
        return scrub(message, self._secrets)

    def not_found(self, what: str) -> StorageNotFoundError:
        return StorageNotFoundError(f"{what} does not exist")
