"""The hot path: an ASGI app (the guard, plain endpoints for the proxied routes, Litestar for
the rest) that authenticates, limits, routes and dispatches chat completions, and publishes
one record per request after the response."""
