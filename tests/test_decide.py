"""``python -m limio_provider.decide``: a decision is checked against Limio (the emulator) before it is recorded."""

from __future__ import annotations

import pytest

from limio_provider.decide import main
from limio_provider.exactly_once.decisions import decision_key
from limio_provider.hooks.limio import LimioHook
from limio_provider.testing import LimioEmulator
from tests.helpers import new_order

pytestmark = pytest.mark.usefixtures("airflow_db")
REF = "5c1e07a2"


def variable(external_id: str) -> str | None:
    from airflow.models.variable import Variable

    return Variable.get(decision_key(external_id), None)


def test_send_is_recorded_only_when_limio_does_not_hold_the_order(
    limio_emulator: LimioEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["EXT-D-NEW", REF, "send"]) == 0
    assert variable("EXT-D-NEW") == f"send {REF}"
    held = LimioHook().submit_order(new_order("EXT-D-HELD"))
    capsys.readouterr()
    assert main(["EXT-D-HELD", REF, "send"]) == 1
    assert f"Limio holds {held.id}" in capsys.readouterr().err
    assert variable("EXT-D-HELD") is None


def test_adopt_is_recorded_only_for_an_order_with_this_external_id_and_partner(
    limio_emulator: LimioEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = LimioHook("limio_admin").submit_admin_order(new_order("EXT-D-P"), partner="partner-org-1")
    other = LimioHook().submit_order(new_order("EXT-D-OTHER"))
    assert main(["EXT-D-P", REF, "adopt", theirs.id, "--partner", "partner-org-newsagents"]) == 1
    assert main(["EXT-D-P", REF, "adopt", other.id, "--partner", "partner-org-1"]) == 1
    err = capsys.readouterr().err
    assert "is for partner 'partner-org-1', not 'partner-org-newsagents'" in err
    assert "has external_id 'EXT-D-OTHER'" in err
    assert variable("EXT-D-P") is None
    assert main(["EXT-D-P", REF, "adopt", theirs.id, "--partner", "partner-org-1"]) == 0
    assert variable("EXT-D-P") == f"adopt {theirs.id} {REF}"


@pytest.mark.parametrize(
    "argv", [["EXT-D-U", "not-a-ref", "send"], ["EXT-D-U", REF, "adopt"], ["EXT-D-U", REF, "send", "order-1"]]
)
def test_bad_usage_records_nothing(limio_emulator: LimioEmulator, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert variable("EXT-D-U") is None
