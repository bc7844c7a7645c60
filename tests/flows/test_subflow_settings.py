"""Asset flows run as subflows without Prefect's per-flow-run heartbeat thread."""

from __future__ import annotations

from prefect.settings import get_current_settings

from flows.asset import subflow_settings


def test_subflow_settings_turn_heartbeats_off_only_inside():
    before = get_current_settings().flows.heartbeat_frequency
    with subflow_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before


def test_subflow_settings_are_built_once_for_the_same_base_settings():
    with subflow_settings():
        first = get_current_settings()
    with subflow_settings():
        assert get_current_settings() is first
