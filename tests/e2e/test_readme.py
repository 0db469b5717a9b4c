"""The README's snippet, run as a new user would run it, against a server process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from tests.e2e.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.e2e


def readme_snippet(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- readme-snippet: {name} -->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert match, f"README.md has no snippet marked {name!r}"
    return textwrap.dedent(match.group(1))  # a snippet inside a list item is indented


def test_the_readme_snippet_is_short() -> None:
    assert len(readme_snippet("create-payment").strip().splitlines()) <= 10


def test_the_readme_snippet_creates_a_payment(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    env = os.environ | {"BALLAST_TOKEN": server.token, "BALLAST_ADDRESS": server.address}
    result = subprocess.run(
        [sys.executable, "-c", readme_snippet("create-payment")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # the simulator started beside the server answers "pending", and its webhook may already be in
    assert re.fullmatch(r"[0-9a-f-]{36} PAYMENT_STATE_(PENDING|SUCCEEDED)\n", result.stdout), result.stdout


def test_the_readme_refund_snippet_is_short() -> None:
    assert len(readme_snippet("refund-payment").strip().splitlines()) <= 12


#: A payment the simulator declines (its `calm` profile declines one in twenty) cannot be refunded:
#: the snippets run again, with a new payment, this many times at most.
REFUND_SNIPPET_RUNS = 3


def test_the_readme_snippet_refunds_part_of_a_payment(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    env = os.environ | {"BALLAST_TOKEN": server.token, "BALLAST_ADDRESS": server.address}
    # the refund snippet continues the create-payment one, as a reader runs them
    program = readme_snippet("create-payment") + "\n" + readme_snippet("refund-payment")
    for _ in range(REFUND_SNIPPET_RUNS):
        result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
        if "FAILED_PRECONDITION" not in result.stderr:
            break
    assert result.returncode == 0, result.stderr
    payment_line, refund_line = result.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36} PAYMENT_STATE_(PENDING|SUCCEEDED)", payment_line), result.stdout
    # the provider answers a refund "pending"; its webhook and the refund resolver may already have settled it
    assert re.fullmatch(r"[0-9a-f-]{36} 2\.34 REFUND_STATE_(PENDING|SUCCEEDED)", refund_line), result.stdout


def test_the_readme_lists_the_services_without_grpcurl(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    env = os.environ | {"BALLAST_ADDRESS": server.address}
    result = subprocess.run(
        [sys.executable, "-c", readme_snippet("list-services")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ballast.payments.v1.PaymentService" in result.stdout
