"""Kept only while broker/transports/ws imports `error_response` from here;
its home is broker/http/responses.py. Delete this module after that import
moves."""

from broker.http.responses import error_response

__all__ = ["error_response"]
