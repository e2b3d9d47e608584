"""``floopy-gateway``: serve the app with granian (ASGI), one process per worker.

Host, port and workers come from the settings (``FLOOPY_GATEWAY_HOST``/``PORT``/``WORKERS``)
unless given as arguments. Each worker builds its own app through ``app_factory``.
"""

from __future__ import annotations

import argparse

from gateway.settings import GatewaySettings

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    settings = GatewaySettings()
    parser = argparse.ArgumentParser(prog="floopy-gateway", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--workers", type=int, default=settings.workers)
    args = parser.parse_args(argv)
    Granian(
        "gateway.app:app_factory",
        factory=True,
        address=args.host,
        port=args.port,
        workers=args.workers,
        interface=Interfaces.ASGI,
        log_enabled=True,
        log_level=settings.log_level.lower(),  # type: ignore[arg-type]
        log_access=settings.access_log,
        workers_kill_timeout=int(settings.publisher.flush_deadline_s) + 5,
        backpressure=settings.backpressure,
    ).serve()


if __name__ == "__main__":
    main()
