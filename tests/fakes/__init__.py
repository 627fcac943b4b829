"""Fake upstream servers: real aiohttp apps speaking the providers' protocols, served with ``aiohttp_server``."""
