//! Releases in the state store, for the deploy executor and the API: the
//! agent keeps them (with everything else an app owns) and never runs them.

use hangar_core::spec::ImageRef;

use crate::store::{ReleaseEvent, ReleaseRow};
use crate::{Agent, AgentError};

impl Agent {
    /// Records a new release of an existing app with the app's next
    /// version; 409 naming the unfinished one if there is one, unless
    /// `queue` (then it waits its turn).
    pub fn create_release(
        &self,
        mut rel: ReleaseRow,
        queue: bool,
    ) -> Result<ReleaseRow, AgentError> {
        self.get_app(&rel.app)?;
        rel.version = self.shared.store.insert_release(&rel, queue)?;
        Ok(rel)
    }

    /// Writes a release's progress (status, plan, outcomes, times, error).
    pub fn save_release(&self, rel: &ReleaseRow) -> Result<(), AgentError> {
        self.shared.store.update_release(rel)
    }

    /// A release of `app` by id or version (`v3`, `3`).
    pub fn get_release(&self, app: &str, key: &str) -> Result<ReleaseRow, AgentError> {
        self.get_app(app)?;
        self.shared
            .store
            .release(app, key)?
            .ok_or_else(|| AgentError::NotFound(format!("release {key} of app {app} not found")))
    }

    /// The host of the cluster that ran a release of `app` (by id or
    /// version) when it is another host's copy; `None` for this host's
    /// own (or one not here).
    pub fn release_host(&self, app: &str, key: &str) -> Result<Option<String>, AgentError> {
        self.shared.store.release_host(app, key)
    }

    /// An app's releases, newest first.
    pub fn list_releases(&self, app: &str, limit: usize) -> Result<Vec<ReleaseRow>, AgentError> {
        self.get_app(app)?;
        self.shared.store.releases(app, limit)
    }

    /// Releases left unfinished (by a crash), oldest first.
    pub fn unfinished_releases(&self) -> Result<Vec<ReleaseRow>, AgentError> {
        self.shared.store.unfinished_releases()
    }

    /// Appends to a release's progress; returns the event's number.
    pub fn push_release_event(
        &self,
        id: &str,
        body: &serde_json::Value,
    ) -> Result<i64, AgentError> {
        self.shared.store.push_release_event(id, body)
    }

    /// A release's progress after event `after`.
    pub fn release_events(&self, id: &str, after: i64) -> Result<Vec<ReleaseEvent>, AgentError> {
        self.shared.store.release_events(id, after)
    }

    /// Makes an image available on this host (pulling it if needed) and
    /// returns what it resolved to, digest included: a deploy does this
    /// before it touches any machine.
    pub async fn resolve_image(&self, image: &str) -> Result<ImageRef, AgentError> {
        self.shared
            .images
            .parse(image)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        match self.shared.images.resolve(image).await {
            Ok(r) => Ok(r.image_ref),
            Err(e) if e.is_user_error() => {
                Err(AgentError::Unprocessable(format!("image {image}: {e}")))
            }
            Err(e) => Err(AgentError::Internal(format!("image {image}: {e}"))),
        }
    }

    /// Checks an image reference without fetching anything.
    pub fn parse_image(&self, image: &str) -> Result<ImageRef, AgentError> {
        self.shared
            .images
            .parse(image)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))
    }

    /// The unpacked layers (bottom first) of an image this host has (or
    /// pulls).
    pub async fn image_layers(&self, image: &str) -> Result<Vec<std::path::PathBuf>, AgentError> {
        self.shared
            .images
            .resolve(image)
            .await
            .map(|r| r.layers)
            .map_err(|e| AgentError::Unprocessable(format!("image {image}: {e}")))
    }

    /// The app's secrets version.
    pub fn secrets_version(&self, app: &str) -> Result<i64, AgentError> {
        Ok(self.list_secrets(app)?.1)
    }
}
