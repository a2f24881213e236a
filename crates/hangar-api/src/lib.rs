//! hangar-api
