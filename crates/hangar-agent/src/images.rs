//! The agent's view of images: a trait so tests can use an in-memory source,
//! implemented for Hangar's real image store.

use std::path::PathBuf;

use hangar_core::process::ImageProcess;
use hangar_core::spec::ImageRef;
use hangar_image::ImageError;

/// An image ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// What the machine reports as `image_ref`.
    pub image_ref: ImageRef,
    /// Process defaults.
    pub process: ImageProcess,
    /// Unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
}

/// Where images come from.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync + 'static {
    /// Checks a reference without fetching anything; returns the
    /// `image_ref` a new machine starts with (digest empty unless pinned).
    fn parse(&self, image: &str) -> Result<ImageRef, ImageError>;

    /// Makes the image available locally (pulling if needed).
    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ImageError>;
}

#[async_trait::async_trait]
impl ImageSource for hangar_image::ImageStore {
    fn parse(&self, image: &str) -> Result<ImageRef, ImageError> {
        let n = hangar_image::ImageName::parse(image)?;
        Ok(ImageRef {
            registry: n.registry,
            repository: n.repository,
            tag: n.tag.unwrap_or_default(),
            digest: n.digest.unwrap_or_default(),
            labels: Default::default(),
        })
    }

    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ImageError> {
        let img = hangar_image::ImageStore::resolve(self, image).await?;
        Ok(ResolvedImage {
            image_ref: ImageRef {
                registry: img.registry.clone(),
                repository: img.repository.clone(),
                tag: img.tag.clone().unwrap_or_default(),
                digest: img.digest.clone(),
                labels: img.config.labels.clone(),
            },
            process: ImageProcess {
                entrypoint: img.config.entrypoint.clone(),
                cmd: img.config.cmd.clone(),
                env: img.config.env.clone(),
                working_dir: img.config.working_dir.clone(),
                user: img.config.user.clone(),
            },
            layers: img.layers,
        })
    }
}

/// An in-memory [`ImageSource`] for tests: every reference resolves to a
/// one-layer-less image running `/bin/sh`, except references containing
/// `missing`, which fail as an unknown image would.
#[cfg(any(test, feature = "test-support"))]
pub mod fake {
    use super::*;

    /// The fake source.
    #[derive(Debug, Default)]
    pub struct FakeImages;

    #[async_trait::async_trait]
    impl ImageSource for FakeImages {
        fn parse(&self, image: &str) -> Result<ImageRef, ImageError> {
            // The real parser's verdict, the fake's answer.
            hangar_image::ImageName::parse(image)?;
            Ok(ImageRef {
                registry: "test".into(),
                repository: image.into(),
                ..ImageRef::default()
            })
        }

        async fn resolve(&self, image: &str) -> Result<ResolvedImage, ImageError> {
            if image.contains("missing") {
                return Err(ImageError::NotFound {
                    reference: image.to_owned(),
                    reason: "the fake has no such image".into(),
                });
            }
            let repository = image.split('@').next().unwrap_or(image);
            let repository = repository.strip_prefix("test/").unwrap_or(repository);
            Ok(ResolvedImage {
                image_ref: ImageRef {
                    registry: "test".into(),
                    repository: repository.into(),
                    tag: "latest".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    labels: Default::default(),
                },
                process: ImageProcess {
                    cmd: vec!["/bin/sh".into()],
                    ..ImageProcess::default()
                },
                layers: vec![],
            })
        }
    }
}
