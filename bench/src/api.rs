//! The API's throughput, in one run, each figure beside its ceiling:
//!
//! - `GET /v1/apps/{app}/machines/{id}` and `GET /v1/apps/{app}/machines`
//!   of an app with 100 machines (real crun machines running `sleep`), with
//!   `wrk -t2 -c32`, beside a trivial axum handler in this process that
//!   answers the same bytes (the ceiling: HTTP and the runtime, nothing of
//!   Hangar);
//! - lifecycle operations with 10 concurrent clients: 100 creates (each
//!   until `started`), then stops, starts and destroys of those machines
//!   (each until its state), per second.
//!
//! Run it through `bench/api.sh`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_bench::{median, rate, wrk_with};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

const MACHINES: usize = 100;
const CLIENTS: usize = 10;

/// A server answering every GET with `body` as JSON: the ceiling.
async fn ceiling(body: Arc<Vec<u8>>) -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.as_ref().clone(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(3)?;
    let seconds = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5u32);
    let reg = Registry::start().await;
    reg.push("bench/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let image_ref = format!("{}/bench/bb:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("api").await?;
    let config: MachineConfig = serde_json::from_value(serde_json::json!({
        "image": image_ref,
        "init": {"cmd": ["/bin/sleep", "100000"]},
        "restart": {"policy": "no"},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 64},
    }))?;
    let req = CreateMachineRequest {
        config: Some(config),
        ..CreateMachineRequest::default()
    };
    // The image pulled once.
    let first = c.create_machine("api", &req).await?.id;
    c.wait_machine("api", &first, &["started"], Duration::from_secs(60))
        .await?;
    c.destroy_machine("api", &first, true).await?;

    let wait = |c: hangar_client::Client, id: String, state: &'static str| async move {
        c.wait_machine("api", &id, &[state], Duration::from_secs(120))
            .await
            .with_context(|| format!("{id} to be {state}"))
    };
    // Creates, 10 at a time, each until started.
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let slots: Vec<String> = (0..MACHINES).map(|i| i.to_string()).collect();
    let create_rate = {
        let (c, req, made) = (c.clone(), req.clone(), made.clone());
        rate(slots, CLIENTS, move |_| {
            let (c, req, made) = (c.clone(), req.clone(), made.clone());
            async move {
                let id = c.create_machine("api", &req).await?.id;
                wait(c, id.clone(), "started").await?;
                made.lock().unwrap().push(id);
                Ok(())
            }
        })
        .await?
    };
    let ids: Vec<String> = made.lock().unwrap().clone();

    // Reads, beside the ceiling serving the same bytes.
    let auth = format!("Authorization: Bearer {}", d.token);
    let one_path = format!("/v1/apps/api/machines/{}", ids[0]);
    let list_path = "/v1/apps/api/machines".to_owned();
    let http = reqwest::Client::new();
    let body = |path: String| {
        let (http, url, token) = (http.clone(), d.url.clone(), d.token.clone());
        async move {
            let r = http
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "GET {path}: {}", r.status());
            Ok::<_, anyhow::Error>(r.bytes().await?.to_vec())
        }
    };
    let one_body = Arc::new(body(one_path.clone()).await?);
    let list_body = Arc::new(body(list_path.clone()).await?);
    let one_ceiling = ceiling(one_body.clone()).await?;
    let list_ceiling = ceiling(list_body.clone()).await?;
    let mut results: [Vec<f64>; 4] = Default::default();
    let targets = [
        format!("{}{one_path}", d.url),
        format!("http://{one_ceiling}{one_path}"),
        format!("{}{list_path}", d.url),
        format!("http://{list_ceiling}{list_path}"),
    ];
    for _ in 0..runs {
        for (i, url) in targets.iter().enumerate() {
            let url = url.clone();
            let headers = vec![auth.clone()];
            let w = tokio::task::spawn_blocking(move || wrk_with(&url, &headers, seconds, 32))
                .await??;
            anyhow::ensure!(
                w.non_2xx == 0,
                "{} non-2xx answers from {}",
                w.non_2xx,
                targets[i]
            );
            results[i].push(w.rps);
        }
    }

    // Stops, starts and destroys, 10 at a time, each until its state.
    let op_rate = |what: &'static str, state: &'static str| {
        let c = c.clone();
        let ids = ids.clone();
        async move {
            rate(ids, CLIENTS, move |id| {
                let c = c.clone();
                async move {
                    match what {
                        "stop" => {
                            c.stop_machine("api", &id, Some("SIGKILL"), None).await?;
                        }
                        "start" => {
                            c.start_machine("api", &id).await?;
                        }
                        _ => c.destroy_machine("api", &id, true).await?,
                    }
                    wait(c, id, state).await?;
                    Ok(())
                }
            })
            .await
        }
    };
    let stop_rate = op_rate("stop", "stopped").await?;
    // Stopped machines make their next container ahead: let that settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_rate = op_rate("start", "started").await?;
    let destroy_rate = op_rate("destroy", "destroyed").await?;

    let (one, one_c, list, list_c) = (
        median(results[0].clone()),
        median(results[1].clone()),
        median(results[2].clone()),
        median(results[3].clone()),
    );
    println!();
    println!(
        "API throughput: wrk -t2 -c32, {seconds}s x {runs} runs, medians; {MACHINES} machines, {CLIENTS} clients"
    );
    println!(
        "  GET one machine ({} bytes)          {one:>9.0} req/s   ceiling {one_c:>9.0}  ({:.2}x)  (goal: >= 20000)",
        one_body.len(),
        one / one_c
    );
    println!(
        "  GET list of {MACHINES} machines ({} bytes)  {list:>9.0} req/s   ceiling {list_c:>9.0}  ({:.2}x)  (goal: >= 5000)",
        list_body.len(),
        list / list_c
    );
    println!("  create, until started                {create_rate:>9.1} /s  (goal: >= 200)");
    println!("  stop, until stopped                  {stop_rate:>9.1} /s");
    println!("  start, until started                 {start_rate:>9.1} /s");
    println!(
        "  destroy, until destroyed             {destroy_rate:>9.1} /s  ({:.2}x create)",
        destroy_rate / create_rate
    );
    Ok(())
}
