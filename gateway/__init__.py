"""Forward-auth gateway: answers "who is this, and may they pass?" for reverse proxies and Hasura."""

__version__ = "0.1.0"
