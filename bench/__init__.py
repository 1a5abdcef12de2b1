"""Throughput benchmark of the Generic Webhook integration and the xsoar-local reroute: `make bench`.

Per stack (the `demisto/fastapi` image replicated in `.venv-image`, then the dev `.venv`), starts every target
itself on that stack's interpreter and free loopback ports, drives it with wrk (when on PATH) or a Python load
generator, checks that every incident answered with a 2xx is in the store exactly once, prints a markdown table
per stack and writes `bench/results/latest.json`. Not part of the test suite.
"""
