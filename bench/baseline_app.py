"""The baseline of the throughput row: a bare Starlette endpoint that parses
the same body with msgspec, does one INSERT into the same PostgreSQL and
answers 201, served by uvicorn with the broker's own configuration
(`broker.ops.server.uvicorn_config`: uvloop, httptools) and the broker's pool
settings (`broker.store.create_pool`, SMSDORA_POOL_MIN/MAX).

    DATABASE_URL=... python -m bench.baseline_app --port P
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.procs import raise_nofile
from broker import store
from broker.ops.server import uvicorn_config
from broker.settings import Settings
from protocol.api import send_request_decoder

TABLE = "bench_baseline"
CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id uuid PRIMARY KEY, recipient text NOT NULL,"
          " body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
_encoder = msgspec.json.Encoder()


def create_app(dsn: str, settings: Settings) -> Starlette:
    pool = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        pool = await store.create_pool(dsn, min_size=settings.pool_min,
                                       max_size=settings.pool_max)
        try:
            yield
        finally:
            await pool.close()

    async def send(request: Request) -> Response:
        req = send_request_decoder.decode(await request.body())
        message_id = uuid.uuid4()
        assert pool is not None
        await pool.execute(f"INSERT INTO {TABLE} (id, recipient, body) VALUES ($1, $2, $3)",
                           message_id, req.recipient, req.message)
        return Response(_encoder.encode({"statusCode": 201, "data": {"id": str(message_id)}}),
                        status_code=201, media_type="application/json")

    return Starlette(routes=[Route("/messages/send", send, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    raise_nofile()
    settings = Settings.from_env()
    app = create_app(os.environ["DATABASE_URL"], settings)
    uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", args.port)).run()


if __name__ == "__main__":
    main()
