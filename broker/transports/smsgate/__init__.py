"""The SMS Gateway for Android app's mobile API (contract section 8)."""

from broker.transports.smsgate.endpoints import PREFIXES, routes

__all__ = ["PREFIXES", "routes"]
