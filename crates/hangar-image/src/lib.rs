//! hangar-image
