"""The asyncio client: the same reads and writes as Client, on grpc.aio, so
that an async endpoint never blocks its event loop on the broker."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import grpc
import grpc.aio

from ._client import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT,
    Backoff,
    Selector,
    Snapshot,
    abort_request,
    gave_up,
    log,
    patch_request,
    promote_request,
    rollback_request,
    set_request,
    socket_from_env,
    stub,
    target,
    translate,
)
from ._errors import BrokerUnavailable
from ._pb import args_pb2


class AsyncClient:
    """``Client``'s methods as coroutines (one RPC each), on a grpc.aio channel.
    Made by ``await argsbroker.connect_async()``; ``async with`` closes it."""

    __module__ = "argsbroker"

    def __init__(self, socket_path: str, channel: grpc.aio.Channel) -> None:
        self.socket_path = socket_path
        self._channel = channel
        self._stub = stub(channel)

    async def snapshot(self, pointer: str = "", timeout: Optional[float] = 10.0) -> Snapshot[Any]:
        """The document (or the value at an RFC 6901 pointer) with its revision."""
        try:
            reply = await self._stub.GetArgs(args_pb2.GetArgsRequest(pointer=pointer), timeout=timeout)
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "GetArgs") from None
        return Snapshot.from_message(reply)

    async def get(self, pointer: str = "", timeout: Optional[float] = 10.0) -> Any:
        """The document, or the value at a pointer, with exact numbers."""
        return (await self.snapshot(pointer, timeout)).value

    async def set(
        self,
        document: Any,
        expected_revision: Optional[int] = None,
        timeout: Optional[float] = 10.0,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Replaces the whole document (a dict, or JSON text); ``canary``,
        ``bake`` and ``force`` as for ``Client.patch``."""
        request = set_request(document, expected_revision, canary, bake, force)
        try:
            return Snapshot.from_message(await self._stub.SetArgs(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "SetArgs") from None

    async def patch(
        self,
        merge_patch: Any,
        expected_revision: Optional[int] = None,
        timeout: Optional[float] = 10.0,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Applies an RFC 7386 merge patch (a dict, or JSON text): None removes a
        key; ``canary``, ``bake`` and ``force`` as for ``Client.patch``."""
        request = patch_request(merge_patch, expected_revision, canary, bake, force)
        try:
            return Snapshot.from_message(await self._stub.PatchArgs(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "PatchArgs") from None

    async def rollback(
        self,
        to_revision: int,
        expected_revision: Optional[int] = None,
        timeout: Optional[float] = 10.0,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """A new revision with the content of retained revision ``to_revision``."""
        request = rollback_request(to_revision, expected_revision, canary, bake, force)
        try:
            return Snapshot.from_message(await self._stub.Rollback(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "Rollback") from None

    async def promote(
        self, candidate_revision: Optional[int] = None, timeout: Optional[float] = 10.0
    ) -> Snapshot[Any]:
        """Gives the running canary's candidate to everyone (``Client.promote``)."""
        request = promote_request(candidate_revision)
        try:
            return Snapshot.from_message(await self._stub.PromoteCanary(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "PromoteCanary") from None

    async def abort(
        self, reason: str = "", candidate_revision: Optional[int] = None, timeout: Optional[float] = 10.0
    ) -> Snapshot[Any]:
        """Drops the running canary (``Client.abort``)."""
        request = abort_request(reason, candidate_revision)
        try:
            return Snapshot.from_message(await self._stub.AbortCanary(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "AbortCanary") from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_async(socket: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> AsyncClient:
    """``connect`` for asyncio: waits (with asyncio.sleep, never blocking the
    loop) up to ``timeout`` seconds for the broker at ``socket``
    ($ARGSBROKER_SOCKET, else /tmp/argsbroker.sock); BrokerUnavailable if
    none answers."""
    path = socket_from_env(socket)
    deadline = time.monotonic() + timeout
    backoff = Backoff(0.01, 1.0)
    warned = False
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        channel = grpc.aio.insecure_channel(target(path), options=CHANNEL_OPTIONS)
        try:
            await stub(channel).GetArgs(args_pb2.GetArgsRequest(pointer=""), timeout=min(left, 2.0))
            return AsyncClient(path, channel)
        except grpc.RpcError as err:
            await channel.close()
            failure = translate(err, path, "GetArgs")
            if not isinstance(failure, BrokerUnavailable):
                raise failure from None
            last = failure
        left = deadline - time.monotonic()
        if left <= 0:
            raise gave_up(path, timeout, last) from None
        if not warned:
            log.warning("no broker at %s yet; waiting up to %g s", path, timeout)
            warned = True
        await asyncio.sleep(min(backoff.next(), left))
