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


def test_the_readme_lists_the_services_without_grpcurl(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    env = os.environ | {"BALLAST_ADDRESS": server.address}
    result = subprocess.run(
        [sys.executable, "-c", readme_snippet("list-services")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ballast.payments.v1.PaymentService" in result.stdout
