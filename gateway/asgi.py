"""The ASGI entry point each server worker imports: ``gateway.asgi:app`` (a factory reading the
configuration ``meshgate gateway`` put in ``MESHGATE_GATEWAY_CONFIG``)."""

from __future__ import annotations

import os

from gateway.app import EdgeGateway, build_app
from gateway.state import GatewayConfig, GatewayRuntime
from shared.telemetry.logs import setup_logging


def app() -> EdgeGateway:
    """Build this worker's application from the environment."""
    setup_logging(os.environ.get("MESHGATE_LOG_LEVEL", "info"))
    config = GatewayConfig.from_json(os.environ["MESHGATE_GATEWAY_CONFIG"])
    return build_app(GatewayRuntime(config))
