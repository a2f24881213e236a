//! hangar-runtime-oci
