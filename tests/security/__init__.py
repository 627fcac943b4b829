"""The security corpus: generated attacks, judged by what the app behind the proxy was served.

See docs/security-corpus.md.
"""
