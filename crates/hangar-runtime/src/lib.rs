//! hangar-runtime
