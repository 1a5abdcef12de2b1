"""Throughput benchmark of the Generic Webhook integration and the xsoar-local reroute: `make bench`.

Starts every target itself on free loopback ports, drives it with wrk (when on PATH) or a Python load
generator, checks that every incident answered with a 2xx is in the store exactly once, prints a markdown
table and writes `bench/results/latest.json`. Not part of the test suite.
"""
