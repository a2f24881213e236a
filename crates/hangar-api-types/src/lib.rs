//! hangar-api-types
