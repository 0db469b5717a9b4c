"""Every case kind Ballast opens is shown under a CaseKind of the API."""

from __future__ import annotations

import importlib
import pkgutil

import server.services
from ballast.reconciliation.v1 import reconciliation_pb2
from server.domain.cases import KIND_FAMILIES
from server.domain.corrections import CORRECTION_CASE
from server.domain.reconciliation import Difference


def _opened_kinds() -> set[str]:
    """Every `*_CASE` constant of the services: the kinds they open."""
    kinds = {CORRECTION_CASE, *(difference.value for difference in Difference)}
    for module_info in pkgutil.iter_modules(server.services.__path__):
        module = importlib.import_module(f"server.services.{module_info.name}")
        kinds |= {value for name, value in vars(module).items() if name.endswith("_CASE") and isinstance(value, str)}
    return kinds


def test_every_kind_a_service_opens_has_a_family() -> None:
    assert _opened_kinds() <= KIND_FAMILIES.keys(), _opened_kinds() - KIND_FAMILIES.keys()


def test_every_family_is_a_case_kind_of_the_api() -> None:
    names = set(reconciliation_pb2.CaseKind.keys())
    assert {f"CASE_KIND_{family}" for family in KIND_FAMILIES.values()} <= names
