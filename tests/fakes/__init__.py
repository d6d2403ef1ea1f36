"""Fake vendor servers for the integration tests (twisted.web on 127.0.0.1:0).

Each fake follows the vendor's documented endpoints, authentication headers,
query encoding and error bodies, and records every request it receives so
that tests can assert on the exact requests.
"""
