//! hangar-test-utils
