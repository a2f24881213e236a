//! Images from source: a `Builder` builds a Dockerfile and pushes the
//! result to hangard's registry (`<hangard>/<app>:<tag>`), returning the
//! digest; `auto` picks buildah (daemonless), then podman, then a docker
//! daemon. Build output
//! goes to the terminal as it comes; a failed build stops here, before
//! anything is deployed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;
use hangar_client::Client;

/// flyctl's build flags.
#[derive(Debug, Args, Clone, Default)]
pub struct BuildFlags {
    /// The Dockerfile (default: [build] dockerfile, else ./Dockerfile).
    #[arg(long)]
    pub(crate) dockerfile: Option<PathBuf>,
    /// A build argument NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub(crate) build_args: Vec<String>,
    /// A build secret id=ID,src=PATH (repeatable).
    #[arg(long = "build-secret", value_name = "id=ID,src=PATH")]
    pub(crate) build_secrets: Vec<String>,
    /// The stage to build.
    #[arg(long)]
    pub(crate) build_target: Option<String>,
    /// Build without the layer cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// A label NAME=VALUE for the image (repeatable).
    #[arg(long = "image-label", value_name = "NAME=VALUE")]
    pub(crate) labels: Vec<String>,
    /// buildah, podman, docker or auto (buildah, then podman, then a
    /// docker daemon that answers).
    #[arg(long, default_value = "auto")]
    pub(crate) builder: String,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context.
    pub context: PathBuf,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The stage.
    pub target: Option<String>,
    /// Build arguments.
    pub args: BTreeMap<String, String>,
    /// `id=..,src=..` secrets.
    pub secrets: Vec<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// No cache.
    pub no_cache: bool,
    /// An ignore file other than the context's `.dockerignore`.
    pub ignorefile: Option<PathBuf>,
}

impl BuildRequest {
    /// The flags every builder takes alike (`docker build`'s): the
    /// Dockerfile, the tag, the stage, build arguments, secrets, labels and
    /// the cache.
    fn dockerfile_args(&self, c: &mut Command, local: &str) {
        c.arg("-f").arg(&self.dockerfile).args(["-t", local]);
        if let Some(t) = &self.target {
            c.args(["--target", t]);
        }
        for (k, v) in &self.args {
            c.arg("--build-arg").arg(format!("{k}={v}"));
        }
        for s in &self.secrets {
            c.arg("--secret").arg(s);
        }
        for l in &self.labels {
            c.arg("--label").arg(l);
        }
        if self.no_cache {
            c.arg("--no-cache");
        }
    }
}

/// Something that builds a Dockerfile and pushes the image.
pub trait Builder {
    /// Its name.
    fn name(&self) -> &'static str;
    /// Builds `req` as `local` (a local tag).
    fn build(&self, req: &BuildRequest, local: &str) -> anyhow::Result<()>;
    /// Pushes `local` to `dest` (`docker://...`) with `creds`; returns the
    /// manifest digest.
    fn push(&self, local: &str, dest: &str, creds: &str) -> anyhow::Result<String>;
}

/// buildah or podman: the same engine, the same flags.
struct Engine {
    program: &'static str,
}

impl Engine {
    fn command(&self) -> Command {
        let mut c = Command::new(self.program);
        // A storage of its own (tests, CI), else the system's.
        if let Ok(root) = std::env::var("HANGAR_BUILD_STORAGE") {
            c.args([
                "--root",
                &format!("{root}/root"),
                "--runroot",
                &format!("{root}/run"),
            ]);
        }
        c
    }
}

impl Builder for Engine {
    fn name(&self) -> &'static str {
        self.program
    }

    fn build(&self, req: &BuildRequest, local: &str) -> anyhow::Result<()> {
        let mut c = self.command();
        c.arg(if self.program == "buildah" {
            "bud"
        } else {
            "build"
        });
        // chroot isolation: RUN steps need no OCI runtime and make no
        // network rules on the host. Base images from plain-HTTP registries
        // (local ones) are allowed.
        c.args([
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--layers",
            "--force-rm",
        ]);
        req.dockerfile_args(&mut c, local);
        if let Some(f) = &req.ignorefile {
            c.arg("--ignorefile").arg(f);
        }
        c.arg(&req.context);
        let status = c
            .status()
            .with_context(|| format!("running {}", self.program))?;
        if !status.success() {
            bail!("the build failed (its output is above): nothing was deployed");
        }
        Ok(())
    }

    fn push(&self, local: &str, dest: &str, creds: &str) -> anyhow::Result<String> {
        let dir = tempfile::tempdir()?;
        let digestfile = dir.path().join("digest");
        let status = self
            .command()
            .args([
                "push",
                "--tls-verify=false",
                "--creds",
                creds,
                "--digestfile",
            ])
            .arg(&digestfile)
            .args([local, dest])
            .status()
            .with_context(|| format!("running {} push", self.program))?;
        if !status.success() {
            bail!("pushing the image to hangard failed (see above)");
        }
        let digest = std::fs::read_to_string(&digestfile)
            .context("the pushed image's digest")?
            .trim()
            .to_owned();
        Ok(digest)
    }
}

/// A docker daemon, through the `docker` CLI: `docker build` (BuildKit when
/// the daemon has it), then `docker push` with the token in a
/// `DOCKER_CONFIG` of its own, so the user's docker login is never touched.
/// The daemon reaches hangard over plain HTTP on loopback addresses (docker
/// allows 127.0.0.0/8 by default); another address must be in the daemon's
/// `insecure-registries`.
struct Docker;

impl Docker {
    /// Whether a daemon answers.
    fn answers() -> bool {
        on_path("docker")
            && Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }
}

/// A docker `config.json` that logs in to `host` with `creds` (`user:pass`).
fn docker_config(host: &str, creds: &str) -> String {
    use base64::Engine as _;
    serde_json::json!({
        "auths": {host: {"auth": base64::engine::general_purpose::STANDARD.encode(creds)}}
    })
    .to_string()
}

/// The digest in `docker push`'s last line (`TAG: digest: sha256:... size: N`).
fn pushed_digest(output: &str) -> Option<String> {
    output.lines().rev().find_map(|l| {
        let rest = l.split("digest: ").nth(1)?;
        let d = rest.split_whitespace().next()?;
        (d.starts_with("sha256:") && d.len() == 71).then(|| d.to_owned())
    })
}

impl Builder for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn build(&self, req: &BuildRequest, local: &str) -> anyhow::Result<()> {
        let mut c = Command::new("docker");
        c.arg("build");
        req.dockerfile_args(&mut c, local);
        if req.ignorefile.is_some() {
            bail!("[build] ignorefile needs buildah or podman: docker reads only .dockerignore");
        }
        c.arg(&req.context);
        if !c.status().context("running docker")?.success() {
            bail!("the build failed (its output is above): nothing was deployed");
        }
        Ok(())
    }

    fn push(&self, local: &str, dest: &str, creds: &str) -> anyhow::Result<String> {
        let target = dest.trim_start_matches("docker://");
        let host = target.split('/').next().unwrap_or_default();
        let config = tempfile::tempdir()?;
        std::fs::write(
            config.path().join("config.json"),
            docker_config(host, creds),
        )?;
        if !Command::new("docker")
            .args(["tag", local, target])
            .status()
            .context("running docker tag")?
            .success()
        {
            bail!("docker tag {local} {target} failed");
        }
        let out = Command::new("docker")
            .arg("--config")
            .arg(config.path())
            .args(["push", target])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running docker push")?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            bail!("pushing the image to hangard failed (see above)");
        }
        pushed_digest(&text).context("docker push did not print the pushed digest")
    }
}

fn on_path(p: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
}

/// The builder `choice` names (`auto`: buildah, then podman, then a docker
/// daemon that answers).
pub fn pick(choice: &str) -> anyhow::Result<Box<dyn Builder>> {
    let engine = |program: &'static str| -> anyhow::Result<Box<dyn Builder>> {
        if !on_path(program) {
            bail!("{program} is not installed: apt-get install -y {program}");
        }
        Ok(Box::new(Engine { program }))
    };
    match choice {
        "buildah" => engine("buildah"),
        "podman" => engine("podman"),
        "docker" => {
            if !Docker::answers() {
                bail!(
                    "no docker daemon answers here (docker version failed); use --builder buildah"
                );
            }
            Ok(Box::new(Docker))
        }
        "auto" => {
            for p in ["buildah", "podman"] {
                if on_path(p) {
                    return engine(p);
                }
            }
            if Docker::answers() {
                return Ok(Box::new(Docker));
            }
            bail!("no builder here: apt-get install -y buildah (or podman, or run a docker daemon)")
        }
        other => bail!("--builder {other:?}: use buildah, podman, docker or auto"),
    }
}

/// Builds `req` and pushes it to hangard as `<app>:<tag>`; returns the
/// image by digest (`<hangard>/<app>@sha256:...`).
pub fn build_and_push(
    c: &Client,
    builder: &dyn Builder,
    req: &BuildRequest,
    app: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let local = format!("localhost/hangar-build/{app}:{tag}");
    println!("==> Building image with {}", builder.name());
    builder.build(req, &local)?;
    let host = c.registry_host();
    let dest = format!("docker://{host}/{app}:{tag}");
    println!("==> Pushing image to {host}/{app}:{tag}");
    let digest = builder.push(&local, &dest, &format!("hangar:{}", c.token()))?;
    let image = format!("{host}/{app}@{digest}");
    println!("--> Pushed image: {image}");
    Ok(image)
}

/// The build of `dir` with `flags` (and fly.toml's `[build]`), if there is
/// a Dockerfile to build.
pub fn request(
    dir: &Path,
    flags: &BuildFlags,
    build: Option<&hangar_appconfig::Build>,
) -> Option<BuildRequest> {
    let dockerfile = flags
        .dockerfile
        .clone()
        .or_else(|| {
            build
                .and_then(|b| b.dockerfile.as_ref())
                .map(|d| dir.join(d))
        })
        .unwrap_or_else(|| dir.join("Dockerfile"));
    if !dockerfile.is_file() {
        return None;
    }
    let mut args: BTreeMap<String, String> = build
        .map(|b| {
            b.args
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect()
        })
        .unwrap_or_default();
    for a in &flags.build_args {
        if let Some((k, v)) = a.split_once('=') {
            args.insert(k.to_owned(), v.to_owned());
        }
    }
    Some(BuildRequest {
        context: dir.to_owned(),
        dockerfile,
        target: flags
            .build_target
            .clone()
            .or_else(|| build.and_then(|b| b.build_target.clone())),
        args,
        secrets: flags.build_secrets.clone(),
        labels: flags.labels.clone(),
        no_cache: flags.no_cache,
        ignorefile: build
            .and_then(|b| b.ignorefile.as_ref())
            .map(|f| dir.join(f)),
    })
}

/// A deployment tag, as flyctl makes them.
pub fn deployment_tag() -> String {
    format!("deployment-{}", ulid::Ulid::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_push_logs_in_on_its_own_and_reports_the_digest() {
        let c: serde_json::Value =
            serde_json::from_str(&docker_config("127.0.0.1:4280", "hangar:tok:en")).unwrap();
        assert_eq!(c["auths"]["127.0.0.1:4280"]["auth"], "aGFuZ2FyOnRvazplbg==");
        let out = "The push refers to repository [127.0.0.1:4280/site]\n\
            5f70bf18a086: Pushed\n\
            deployment-01J: digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef size: 527\n";
        assert_eq!(
            pushed_digest(out).as_deref(),
            Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(pushed_digest("error: denied\n"), None);
        assert!(pick("kaniko").is_err());
    }
}
