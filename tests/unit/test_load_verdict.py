"""What fails a load run beyond its invariants: Locust's own reports of a user that raised, or of a call
answered with a status no well-formed call of a well-behaved client gets."""

from __future__ import annotations

from pathlib import Path

from loadtests.__main__ import STOP_TIMEOUT_S, load_problems

FAILURES_HEADER = "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
EXCEPTIONS_HEADER = "Count,Message,Traceback,Nodes\n"


def _reports(out: Path, failures: str = "", exceptions: str = "") -> Path:
    (out / "stats_failures.csv").write_text(FAILURES_HEADER + failures)
    (out / "stats_exceptions.csv").write_text(EXCEPTIONS_HEADER + exceptions)
    return out


def test_honest_answers_under_faults_do_not_fail_the_run(tmp_path: Path) -> None:
    failures = (
        "grpc,CreatePayment UNAVAILABLE,CallFailed('UNAVAILABLE: breaker open'),17,a,b\n"
        "grpc,ModifyLeg FAILED_PRECONDITION,CallFailed('FAILED_PRECONDITION: filled'),1,a,b\n"
        "grpc,CreatePayment DEADLINE_EXCEEDED,CallFailed('DEADLINE_EXCEEDED'),2,a,b\n"
    )
    assert load_problems(_reports(tmp_path, failures)) == []


def test_a_status_no_client_should_get_or_a_user_that_raised_fails_the_run(tmp_path: Path) -> None:
    failures = "grpc,GetCase PERMISSION_DENIED,CallFailed('PERMISSION_DENIED: needs an operator'),3,a,b\n"
    exceptions = '2,"KeyError(\'payments\')","Traceback ...",local\n'
    problems = load_problems(_reports(tmp_path, failures, exceptions))
    assert len(problems) == 2
    assert "GetCase PERMISSION_DENIED 3 time(s)" in problems[1] and "a user raised 2 time(s)" in problems[0]


def test_users_have_the_whole_retry_budget_to_finish_once_the_load_stops() -> None:
    from chaos.load import ATTEMPTS_MAX, CALL_DEADLINE_S, RETRY_DELAY_MAX_S

    assert STOP_TIMEOUT_S > ATTEMPTS_MAX * CALL_DEADLINE_S + (ATTEMPTS_MAX - 1) * RETRY_DELAY_MAX_S
