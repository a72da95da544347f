"""The sample chat gateway: server, terminal client, demo (see README.md)."""
