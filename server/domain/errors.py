"""Named errors, with two roots. They become gRPC status codes only at the edge (server/api/errors.py).

- `BallastError`: an operating error, part of the contract. The caller's input, the state of what it
  acts on, a dependency that is away or slow: each kind maps to one deliberate status code, and a test
  checks that every kind has one.
- `Defect`: an invariant that Ballast's own code broke (an unbalanced posting built by our code, a
  handler reached without authentication, a use case called wrongly). A bug, never the caller's fault
  nor a provider's: logged loudly with its stack and answered INTERNAL on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass


def echo(value: str, length_max: int = 24) -> str:
    """A piece of caller input quoted for an error message, cut short so that no input can bloat one."""
    return repr(value) if len(value) <= length_max else repr(value[:length_max]) + f"... ({len(value)} characters)"


class Defect(Exception):
    """Root of the bugs Ballast detects in itself: an invariant its own code broke. No input may raise one."""


class BallastError(Exception):
    """Root of every operating error Ballast raises on purpose, each a part of its contract."""

    #: True when the caller may repeat the same request (same idempotency key) and expect it to work.
    retryable: bool = False


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one input field, named by its path in the request (e.g. `amount.value`)."""

    field: str
    description: str


class InvalidArgument(BallastError):
    """The request is malformed. Nothing was written."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class NotFound(BallastError):
    def __init__(self, kind: str, identifier: str) -> None:
        self.kind = kind
        self.identifier = identifier
        super().__init__(f"{kind} {identifier!r} not found")


class FailedPrecondition(BallastError):
    """The request is well formed, but the thing it acts on is not in the state it needs. Nothing was written."""

    def __init__(self, subject: str, message: str) -> None:
        self.subject = subject
        super().__init__(message)


class PermissionDenied(BallastError):
    """The caller is authenticated, but its role may not do this."""

    def __init__(self, client_id: str, role: str, permission: str) -> None:
        super().__init__(f"client {client_id!r} with role {role!r} may not {permission}")


class IdempotencyKeyReused(BallastError):
    """The idempotency key was already used for a request with other parameters."""

    def __init__(self, idempotency_key: str, operation: str) -> None:
        self.idempotency_key = idempotency_key
        self.operation = operation
        super().__init__(
            f"idempotency_key {idempotency_key!r} was already used with different parameters"
            f" (first used for {operation}); use a new key for a new request"
        )


class ConcurrencyConflict(BallastError):
    """A concurrent request collided with this one; retrying with the same idempotency key is safe."""

    retryable = True


class Unavailable(BallastError):
    """A dependency (the database) could not be reached in time; retrying with the same key is safe."""

    retryable = True


class DeadlineExceeded(BallastError):
    """The caller's deadline ran out. For a create, whether it took effect is unknown to the caller:
    repeating it with the same idempotency key returns the outcome without doing it twice. `begun`
    False: it ran out before anything was done, so the outcome is known (nothing)."""

    retryable = True

    def __init__(self, message: str, *, begun: bool = True) -> None:
        self.begun = begun
        super().__init__(message)


#: The shortest wait a caller told to retry is given (its RetryInfo and its message say the same).
RETRY_AFTER_MIN_S = 0.05


class ProviderUnavailable(Unavailable):
    """The provider was not asked (its circuit breaker is open, it refused the connection, it rate
    limited us): the payment stays recorded and unsent. Retrying with the same key sends it."""

    def __init__(self, provider: str, reason: str, retry_after_s: float) -> None:
        self.provider = provider
        self.retry_after_s = max(retry_after_s, RETRY_AFTER_MIN_S)
        super().__init__(f"provider {provider} was not asked: {reason}; retry in {self.retry_after_s:.2f} s")
