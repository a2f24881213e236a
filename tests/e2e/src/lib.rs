//! End-to-end tests live in `tests/`; see `hangar-test-utils` for the harness.
