"""Which core tests pin each section of ``reference/openmeter-spec.md``.

``test_spec_coverage.py`` fails when a section from §1 to §12 lists no test or a listed node id
does not exist. Ids are ``path::function`` or ``path::function[param-id]``.
"""

from __future__ import annotations

E = "tests/core/test_engine.py"
G = "tests/core/test_grants.py"
P = "tests/core/test_periods.py"
V = "tests/core/test_values.py"
H = "tests/core/test_history.py"
T = "tests/core/test_timeutil.py"
U = "tests/core/test_usage.py"
M = "tests/core/test_model.py"
D = "tests/core/test_decisions.py"
PR = "tests/core/test_properties.py"

SPEC_COVERAGE: dict[str, list[str]] = {
    "§1": [
        f"{T}::test_stored_instants_floor_and_queries_round_up[30s]",
        f"{T}::test_parse_rfc3339_rejects_text_without_zone[naive]",
        f"{E}::test_reads_round_up_to_the_next_minute[read-rounds-up-to-include-minute]",
        f"{E}::test_engine_cases[event-at-reset-instant-belongs-to-new-period]",
        f"{G}::test_activity_window_is_half_open[at-expiry]",
        f"{V}::test_inactive_metered_entitlement_has_only_has_access_false[zero-length-never-active]",
    ],
    "§2": [
        f"{U}::test_usage_query[sum-half-open-excludes-end]",
        f"{U}::test_usage_query[latest-without-events-is-zero]",
        f"{U}::test_customer_key_always_counts_as_a_subject_key",
        f"{E}::test_unique_count_subtracts_distinct_counts_from_period_start",
        f"{E}::test_engine_cases[usage-before-measure-usage-from-ignored]",
    ],
    "§3": [
        f"{M}::test_feature_defaults_are_last_known_and_eventual",
        f"{M}::test_is_ulid_tells_keys_from_ids[feature-key]",
    ],
    "§4": [
        f"{V}::test_boolean_entitlement_has_access_while_active",
        f"{V}::test_static_entitlement_returns_its_config_text",
        f"{V}::test_inactive_metered_entitlement_has_only_has_access_false[scheduled]",
        f"{P}::test_first_period_starts_at_measure_usage_from",
    ],
    "§5": [
        f"{P}::test_monthly_recurrence_from_jan31_clamps_every_month",
        f"{P}::test_period_at_matches_openmeter[jan31-anchor-august]",
        f"{P}::test_period_at_matches_openmeter[jan31-anchor-at-instant]",
        f"{P}::test_period_at_matches_openmeter[jan30-anchor-february]",
        f"{P}::test_manual_reset_starts_a_period[retain-anchor]",
        f"{P}::test_manual_reset_starts_a_period[new-anchor]",
        f"{P}::test_interval_changes_through_resets",
        f"{P}::test_reset_timeline_excludes_start_and_includes_end",
        f"{P}::test_interval_edit_takes_effect_at_next_boundary",
    ],
    "§6": [
        f"{V}::test_has_access[zero-balance-is-strictly-no-access]",
        f"{V}::test_has_access[soft-limit-always-has-access]",
        f"{V}::test_grant_balances_list_only_grants_active_at_the_instant",
        f"{V}::test_usage_is_counted_from_the_current_period_start",
        f"{PR}::test_usage_plus_balance_minus_overage_is_what_was_available",
        f"{PR}::test_total_available_is_balance_plus_usage_minus_overage",
    ],
    "§7": [
        f"{G}::test_expiration_uses_overflow_arithmetic[jan31-month-overflows]",
        f"{G}::test_expiration_uses_overflow_arithmetic[feb29-year]",
        f"{G}::test_burn_order_matches_openmeter_prioritize_grants",
        f"{G}::test_absent_priority_is_zero_and_burns_before_one",
        f"{G}::test_default_grant_identity_priority_and_refill",
        f"{G}::test_negative_grants_are_ignored",
        f"{G}::test_future_void_ends_activity_when_it_arrives",
        f"{E}::test_engine_cases[default-grant-refills-each-period]",
    ],
    "§8": [
        f"{E}::test_engine_cases[grant-activated-after-overage-absorbs-it]",
        f"{E}::test_engine_cases[rollover-min-equals-max-refills]",
        f"{E}::test_engine_cases[preserved-overage-eats-rolled-balance]",
        f"{E}::test_engine_cases[preserved-overage-remainder-stays]",
        f"{E}::test_engine_cases[recurrence-after-rollover-starts-full]",
        f"{E}::test_engine_cases[expired-grant-burn-still-counts-in-available]",
        f"{E}::test_engine_cases[v1-rollover-defaults-lose-balance-at-boundary]",
        f"{E}::test_burn_exhausts_in_order_and_returns_uncovered",
        f"{E}::test_resuming_from_a_snapshot_matches_a_full_replay",
        f"{PR}::test_resuming_from_any_snapshot_equals_a_full_replay",
        f"{PR}::test_order_of_equal_inputs_does_not_matter",
        f"{PR}::test_usage_is_monotonic",
    ],
    "§9": [
        f"{H}::test_windows_cover_every_hour_with_usage_and_approximate_balance",
        f"{H}::test_windows_before_measure_usage_from_are_dropped",
        f"{H}::test_day_windows_follow_the_time_zone",
        f"{H}::test_burndown_marks_resets_and_the_rollover_segment",
    ],
    "§10": [
        f"{P}::test_manual_reset_outcomes[applied]",
        f"{P}::test_manual_reset_outcomes[at-programmatic-boundary]",
        f"{P}::test_manual_reset_outcomes[previous-period]",
        f"{P}::test_reset_remembers_its_preserve_flag",
        f"{D}::test_manual_reset_remembers_preserve_even_after_the_entitlement_flag_changes",
        f"{D}::test_future_reset_waits_until_its_instant",
        f"{D}::test_reset_not_after_the_last_reset_changes_nothing",
    ],
    "§11": [
        f"{H}::test_from_before_measure_usage_from_is_refused",
        f"{M}::test_is_ulid_tells_keys_from_ids[ulid]",
    ],
    "§12": [
        f"{G}::test_absent_priority_is_zero_and_burns_before_one",
        f"{E}::test_engine_cases[v1-rollover-defaults-lose-balance-at-boundary]",
        f"{E}::test_latest_usage_is_sum_of_phase_latest_values",
        f"{E}::test_latest_overage_is_carried_into_the_next_phase",
        f"{E}::test_latest_meters_refuse_snapshots",
        f"{D}::test_reading_at_effective_at_shows_the_full_amount",
    ],
}
