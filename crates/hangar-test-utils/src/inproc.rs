//! An in-process daemon: the real agent (SQLite included) and the real API
//! router, served over HTTP on a free loopback port, with the recording
//! fake runtime and the fake image source at the I/O edge. For fast tests
//! of everything above the runtime (the HTTP surface, clients, the CLI)
//! that need no root; the real-`hangard` harness is [`crate::daemon`].

use std::sync::Arc;

use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, Auth};
use hangar_client::Client;
use hangar_runtime::fake::FakeRuntime;

/// A daemon serving until dropped.
pub struct TestDaemon {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its admin token.
    pub token: String,
    /// The agent behind it.
    pub agent: Agent,
    /// The fake runtime its machines run on.
    pub runtime: Arc<FakeRuntime>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    /// Starts one with a fresh data dir.
    pub async fn start() -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = Arc::new(FakeRuntime::new());
        let agent = Agent::open(
            AgentConfig::new(dir.path()),
            runtime.clone(),
            Arc::new(FakeImages),
        )
        .await
        .expect("opening the agent");
        let token = format!("test-{}", std::process::id());
        let app = hangar_api::router(ApiState {
            agent: agent.clone(),
            images: None,
            auth: Arc::new(Auth::new(token.clone())),
            deploy: hangar_deploy::Deployer::new(agent.clone()),
            registry: None,
            cluster: None,
            proxy: None,
            renderings: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestDaemon {
            url,
            token,
            agent,
            runtime,
            server,
            _dir: dir,
        }
    }

    /// A client with the admin token.
    pub fn client(&self) -> Client {
        Client::new(&self.url, &self.token)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.server.abort();
    }
}
