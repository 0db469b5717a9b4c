"""The provider simulator: a fake card gateway that misbehaves on purpose, reproducibly.

It runs as its own process (`python -m simulator`) and Ballast talks to it only over HTTP, so it
imports nothing from `server` or `ballast`: a provider cannot share code with its clients.
"""
