"""The hot path: a litestar app that authenticates, limits, routes and dispatches chat
completions, and publishes one record per request after the response."""
