"""Clients for the providers Ballast calls: timeouts and circuit breakers live here."""
