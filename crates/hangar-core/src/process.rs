//! From an image's config and a machine's config to the process that runs,
//! by Docker's rules (which Fly follows):
//!
//! - `init.exec` replaces both ENTRYPOINT and CMD;
//! - otherwise `init.entrypoint` replaces ENTRYPOINT (and, as with
//!   `docker run --entrypoint`, drops the image's CMD), and `init.cmd`
//!   replaces CMD;
//! - the environment is the image's `Env`, then the machine's `env`, then the
//!   platform's reserved `FLY_*` variables; `PATH` gets Docker's default when
//!   the image sets none;
//! - the working directory is the image's `WorkingDir`, or `/`;
//! - the user is the image's `User`, resolved later against the image's
//!   `/etc/passwd` by the runtime.

use std::collections::BTreeMap;

/// Docker's default `PATH` for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process-related parts of an OCI image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageProcess {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value` strings.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`: `""`, `name`, `uid`, `name:group` or `uid:gid`.
    pub user: String,
}

/// The machine config's `init` overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitOverrides {
    /// `init.exec`.
    pub exec: Option<Vec<String>>,
    /// `init.entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `init.cmd`.
    pub cmd: Option<Vec<String>>,
}

/// The process a machine runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessSpec {
    /// Program and arguments; never empty.
    pub argv: Vec<String>,
    /// Environment, in order, without duplicates.
    pub env: Vec<(String, String)>,
    /// Absolute working directory.
    pub cwd: String,
    /// The image's user spec, unresolved.
    pub user: String,
}

/// Why no process could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// Neither the image nor the machine config says what to run.
    #[error(
        "no command to run: the image has no ENTRYPOINT or CMD and the machine config sets no init.cmd, init.entrypoint or init.exec"
    )]
    NoCommand,
    /// An environment variable name is empty or contains `=` or NUL.
    #[error("invalid environment variable name {0:?}")]
    BadEnvName(String),
    /// An environment value or argument contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
}

/// Derives the process to run.
pub fn resolve(
    image: &ImageProcess,
    init: &InitOverrides,
    machine_env: &BTreeMap<String, String>,
    reserved_env: &[(String, String)],
) -> Result<ProcessSpec, ProcessError> {
    let non_empty = |v: &Option<Vec<String>>| v.as_ref().filter(|v| !v.is_empty()).cloned();
    let argv = if let Some(exec) = non_empty(&init.exec) {
        exec
    } else {
        let (entrypoint, default_cmd) = match non_empty(&init.entrypoint) {
            Some(ep) => (ep, Vec::new()),
            None => (image.entrypoint.clone(), image.cmd.clone()),
        };
        let cmd = non_empty(&init.cmd).unwrap_or(default_cmd);
        entrypoint.into_iter().chain(cmd).collect::<Vec<_>>()
    };
    if argv.is_empty() {
        return Err(ProcessError::NoCommand);
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ProcessError::Nul("a command argument"));
    }

    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| -> Result<(), ProcessError> {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(ProcessError::BadEnvName(name.to_owned()));
        }
        if value.contains('\0') {
            return Err(ProcessError::Nul("an environment value"));
        }
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => env.push((name.to_owned(), value.to_owned())),
        }
        Ok(())
    };
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        set(name, value)?;
    }
    for (name, value) in machine_env {
        set(name, value)?;
    }
    for (name, value) in reserved_env {
        set(name, value)?;
    }
    if !env.iter().any(|(n, _)| n == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }

    let cwd = if image.working_dir.starts_with('/') {
        image.working_dir.clone()
    } else if image.working_dir.is_empty() {
        "/".to_owned()
    } else {
        format!("/{}", image.working_dir)
    };

    Ok(ProcessSpec {
        argv,
        env,
        cwd,
        user: image.user.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> ImageProcess {
        ImageProcess {
            entrypoint: v(&["/entry"]),
            cmd: v(&["serve", "--port", "80"]),
            env: v(&["PATH=/bin", "A=image", "EMPTY"]),
            working_dir: "/app".into(),
            user: "nobody".into(),
        }
    }

    fn argv(init: InitOverrides) -> Vec<String> {
        resolve(&image(), &init, &BTreeMap::new(), &[])
            .unwrap()
            .argv
    }

    #[test]
    fn docker_rules_for_entrypoint_and_cmd() {
        assert_eq!(
            argv(InitOverrides::default()),
            v(&["/entry", "serve", "--port", "80"])
        );
        assert_eq!(
            argv(InitOverrides {
                cmd: Some(v(&["migrate"])),
                ..Default::default()
            }),
            v(&["/entry", "migrate"])
        );
        // Overriding the entrypoint drops the image's CMD, as docker run does.
        assert_eq!(
            argv(InitOverrides {
                entrypoint: Some(v(&["/bin/sh", "-c"])),
                ..Default::default()
            }),
            v(&["/bin/sh", "-c"])
        );
        assert_eq!(
            argv(InitOverrides {
                entrypoint: Some(v(&["/bin/sh", "-c"])),
                cmd: Some(v(&["echo hi"])),
                ..Default::default()
            }),
            v(&["/bin/sh", "-c", "echo hi"])
        );
        assert_eq!(
            argv(InitOverrides {
                exec: Some(v(&["/bin/true"])),
                entrypoint: Some(v(&["/x"])),
                cmd: Some(v(&["y"])),
            }),
            v(&["/bin/true"])
        );
        // Empty overrides count as absent.
        assert_eq!(
            argv(InitOverrides {
                exec: Some(vec![]),
                cmd: Some(vec![]),
                ..Default::default()
            }),
            v(&["/entry", "serve", "--port", "80"])
        );
    }

    #[test]
    fn no_command_is_an_error() {
        let img = ImageProcess::default();
        assert_eq!(
            resolve(&img, &InitOverrides::default(), &BTreeMap::new(), &[]),
            Err(ProcessError::NoCommand)
        );
    }

    #[test]
    fn env_layers_machine_over_image_and_reserved_over_both() {
        let mut menv = BTreeMap::new();
        menv.insert("A".to_string(), "machine".to_string());
        menv.insert("FLY_APP_NAME".to_string(), "spoofed".to_string());
        let reserved = vec![("FLY_APP_NAME".to_string(), "real".to_string())];
        let p = resolve(&image(), &InitOverrides::default(), &menv, &reserved).unwrap();
        let get = |n: &str| p.env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/bin"));
        assert_eq!(get("A"), Some("machine"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("FLY_APP_NAME"), Some("real"));
        assert_eq!(p.cwd, "/app");
        assert_eq!(p.user, "nobody");
    }

    #[test]
    fn default_path_and_cwd() {
        let img = ImageProcess {
            cmd: v(&["sh"]),
            ..Default::default()
        };
        let p = resolve(&img, &InitOverrides::default(), &BTreeMap::new(), &[]).unwrap();
        assert_eq!(p.env[0], ("PATH".to_string(), DEFAULT_PATH.to_string()));
        assert_eq!(p.cwd, "/");
    }

    #[test]
    fn bad_env_names_are_refused() {
        let mut menv = BTreeMap::new();
        menv.insert("A=B".to_string(), "x".to_string());
        assert!(matches!(
            resolve(&image(), &InitOverrides::default(), &menv, &[]),
            Err(ProcessError::BadEnvName(_))
        ));
    }
}
