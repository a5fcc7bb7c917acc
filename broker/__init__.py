"""smsdora broker: the HTTP API, the device WebSocket, and the dispatcher."""
