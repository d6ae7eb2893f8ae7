"""The wire: typed signaling messages (sans-I/O), the WebSocket session and HTTP routes."""
