//! The shape of 6PN addresses across a cluster, against a real PostgreSQL:
//! one installation id (the first host's), a number per host kept across
//! joins, and one id per network name however many hosts ask at once.

use std::time::Duration;

use hangar_cluster::{ClusterConfig, add_network, identity};
use hangar_test_utils::postgres::Postgres;

fn cfg(url: &str, host: &str) -> ClusterConfig {
    ClusterConfig {
        url: url.to_owned(),
        host_id: host.to_owned(),
        region: "ams".into(),
        api_url: "http://127.0.0.1:1".into(),
        proxy_addr: None,
        cpus: 1,
        memory_mb: 1024,
        admin_token_hash: String::new(),
        down_after: Duration::from_secs(15),
        mesh: None,
        admin_token: Default::default(),
    }
}

#[tokio::test]
async fn hosts_share_the_installation_and_networks_and_keep_their_numbers() {
    if !hangar_test_utils::host_tier(
        "hosts_share_the_installation_and_networks_and_keep_their_numbers",
        &[],
    ) {
        return;
    }
    let pg = Postgres::start();
    pg.create_db("hangar");
    let url = pg.url("hangar");
    let a = identity(&cfg(&url, "host-a"), 0x1234).await.unwrap();
    let b = identity(&cfg(&url, "host-b"), 0x9999).await.unwrap();
    assert_eq!((a.installation, a.host_index), (0x1234, 1));
    assert_eq!((b.installation, b.host_index), (0x1234, 2));
    // A host that joins again keeps its number.
    assert_eq!(identity(&cfg(&url, "host-a"), 0x5555).await.unwrap(), a);
    assert!(identity(&cfg(&url, "Bad Id"), 1).await.is_err());

    // Networks: the lowest free id, one per name, whoever asks.
    let (ca, cb) = (cfg(&url, "host-a"), cfg(&url, "host-b"));
    let (x, y) = tokio::join!(add_network(&ca, "default"), add_network(&cb, "default"));
    assert_eq!(x.unwrap(), y.unwrap());
    assert_eq!(add_network(&cb, "default").await.unwrap(), 1);
    assert_eq!(add_network(&ca, "other").await.unwrap(), 2);
    let many: Vec<u16> = futures_join(&[&ca, &cb, &ca, &cb], "third").await;
    assert!(many.iter().all(|i| *i == 3), "{many:?}");
}

async fn futures_join(cfgs: &[&ClusterConfig], name: &str) -> Vec<u16> {
    let mut tasks = Vec::new();
    for c in cfgs {
        let c = (*c).clone();
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            add_network(&c, &name).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
