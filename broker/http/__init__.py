"""The client API over HTTP (contract section 3): endpoints declared once in
endpoints.py, from which the routes and /openapi.json are made; the
middleware around every request; the error shape in responses.py."""

from broker.http.endpoints import ENDPOINTS, fast_http, routes
from broker.http.middleware import EXCEPTION_HANDLERS, RequestContext
from broker.http.responses import error_response

__all__ = ["ENDPOINTS", "EXCEPTION_HANDLERS", "RequestContext", "error_response", "fast_http",
           "routes"]
