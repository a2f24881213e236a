//! From a machine's [`MachineSpec`] (parsed once, where the config entered)
//! to what the runtime takes: resources, files with their contents, Fly's
//! reserved environment.

use std::collections::BTreeMap;

use hangar_core::spec::{FileSource, MachineSpec};
use hangar_runtime::{CpuKind, GuestFile, Resources};

use crate::AgentError;

/// Resource limits of a machine; `pids_limit` is the host's override of the
/// task limit (scaled with memory when absent).
pub fn resources(spec: &MachineSpec, pids_limit: Option<u64>) -> Resources {
    let g = spec.guest;
    Resources {
        cpus: g.cpus.clamp(1, 128),
        memory_mb: g.memory_mb.max(32),
        cpu_kind: if g.performance {
            CpuKind::Performance
        } else {
            CpuKind::Shared
        },
        pids_max: pids_limit.unwrap_or_else(|| Resources::default_pids_max(g.memory_mb)),
    }
}

/// The files the runtime writes before a start, their contents at hand: a
/// file from an app secret takes the secret's value (base64, as on Fly)
/// from `secrets`, the app's secrets now.
pub fn guest_files(
    spec: &MachineSpec,
    secrets: &BTreeMap<String, String>,
) -> Result<Vec<GuestFile>, AgentError> {
    spec.files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (contents, secret) = match &f.source {
                FileSource::Raw(b) => (b.clone(), false),
                FileSource::Secret(name) => {
                    let value = secrets.get(name).ok_or_else(|| {
                        AgentError::InvalidArgument(format!(
                            "config.files[{i}].secret_name: app secret {name:?} not found"
                        ))
                    })?;
                    // Never quote the value or the decoder's view of it.
                    let bytes = hangar_core::spec::decode_base64(value).ok_or_else(|| {
                        AgentError::InvalidArgument(format!(
                            "config.files[{i}]: app secret {name} is not valid base64 (file secrets hold base64)"
                        ))
                    })?;
                    (bytes, true)
                }
            };
            Ok(GuestFile {
                path: f.path.as_str().to_owned(),
                contents,
                mode: f.mode,
                secret,
            })
        })
        .collect()
}

/// The `FLY_*` variables Fly sets inside every machine.
pub struct Reserved<'a> {
    /// App name.
    pub app: &'a str,
    /// Machine id.
    pub machine_id: &'a str,
    /// Region.
    pub region: &'a str,
    /// The image as configured.
    pub image: &'a str,
    /// Current version.
    pub version: &'a str,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Metadata (for the process group).
    pub metadata: Option<&'a BTreeMap<String, String>>,
    /// The machine's private IPv6 address, if it has one.
    pub private_ip: &'a str,
}

impl Reserved<'_> {
    /// The variables.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("FLY_APP_NAME".into(), self.app.into()),
            ("FLY_MACHINE_ID".into(), self.machine_id.into()),
            ("FLY_ALLOC_ID".into(), self.machine_id.into()),
            ("FLY_REGION".into(), self.region.into()),
            ("FLY_IMAGE_REF".into(), self.image.into()),
            ("FLY_MACHINE_VERSION".into(), self.version.into()),
            ("FLY_VM_MEMORY_MB".into(), self.memory_mb.to_string()),
        ];
        if !self.private_ip.is_empty() {
            v.push(("FLY_PRIVATE_IP".into(), self.private_ip.into()));
        }
        if let Some(group) = self.metadata.and_then(|m| m.get("fly_process_group")) {
            v.push(("FLY_PROCESS_GROUP".into(), group.clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_take_their_secrets_now() {
        let mut json = serde_json::json!({"image": "x", "files": [
            {"guest_path": "/etc/app.conf", "raw_value": "aGVsbG8K"},
            {"guest_path": "/key", "secret_name": "KEY", "mode": 256},
        ]});
        let spec = MachineSpec::parse(&mut json).unwrap();
        let secrets = BTreeMap::from([("KEY".to_owned(), "c2VjcmV0".to_owned())]);
        let files = guest_files(&spec, &secrets).unwrap();
        assert_eq!(files[0].contents, b"hello\n");
        assert!(!files[0].secret);
        assert_eq!(
            (files[1].contents.as_slice(), files[1].mode),
            (&b"secret"[..], 0o400)
        );
        assert!(files[1].secret);
        let err = guest_files(&spec, &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("app secret \"KEY\" not found"),
            "{err}"
        );
        let bad = BTreeMap::from([("KEY".to_owned(), "not base64!".to_owned())]);
        let err = guest_files(&spec, &bad).unwrap_err().to_string();
        assert!(
            err.contains("not valid base64") && !err.contains("not base64!"),
            "{err}"
        );
    }

    #[test]
    fn resources_follow_the_guest() {
        let mut json = serde_json::json!({"image": "x", "guest": {"cpus": 2, "memory_mb": 64, "cpu_kind": "performance"}});
        let spec = MachineSpec::parse(&mut json).unwrap();
        let r = resources(&spec, None);
        assert_eq!(
            (r.cpus, r.memory_mb, r.cpu_kind, r.pids_max),
            (2, 64, CpuKind::Performance, 256)
        );
        assert_eq!(resources(&spec, Some(100)).pids_max, 100);
    }
}
