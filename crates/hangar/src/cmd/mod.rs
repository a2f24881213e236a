//! One module per command group; each command parses, calls the client,
//! prints.

pub mod apps;
pub mod build;
pub mod checks;
pub mod dashboard;
pub mod deploy;
pub mod doctor;
pub mod flytoml;
pub mod hosts;
pub mod image;
pub mod ips;
pub mod launch;
pub mod logs;
pub mod machine;
pub mod machine_ops;
pub mod scale;
pub mod secrets;
pub mod status;
pub mod tokens;
pub mod volumes;
