//! Machines' own metrics (Fly's `metrics` in a machine's config: a port
//! and a path): at each scrape of `/metrics`, hangard fetches every started
//! machine's endpoint over its private address and passes the samples on
//! with `app` and `machine` labels (a label of the same name the machine
//! set is kept as `exported_app` / `exported_machine`, as Prometheus does).
//! Their types are not carried over: each sample name is passed on as an
//! OpenMetrics `unknown` family, which PromQL queries as it would the
//! original (`rate()`, `histogram_quantile()` over `_bucket`). Names under
//! `hangar_` are hangard's own and are dropped. `hangar_machine_metrics_up`
//! says whether each endpoint answered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hangar_agent::Agent;

/// How long one machine's endpoint may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The most read from one endpoint.
const MAX_BYTES: usize = 4 << 20;

/// A machine whose metrics are fetched.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    app: String,
    machine: String,
    url: String,
}

/// The started machines of this host that ask for their metrics to be
/// collected.
pub(crate) fn targets(agent: &Agent) -> Vec<Target> {
    let mut out = Vec::new();
    for (m, metrics) in agent.started_with_metrics().unwrap_or_default() {
        let Some(port) = metrics["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        let path = metrics["path"].as_str().unwrap_or("/metrics");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let scheme = if metrics["https"].as_bool() == Some(true) {
            "https"
        } else {
            "http"
        };
        let Some(addr) = agent.machine_address(m.id.as_str()).ok().flatten() else {
            continue;
        };
        out.push(Target {
            app: m.app,
            machine: m.id.to_string(),
            url: format!("{scheme}://{}:{port}{path}", addr.ipv4()),
        });
    }
    out
}

/// Fetches every target at once; each with what it answered, if it did.
pub(crate) async fn fetch(targets: Vec<Target>) -> Vec<(Target, Option<String>)> {
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_default();
    let jobs = targets.into_iter().map(|t| {
        let client = client.clone();
        async move {
            let body = async {
                let r = client
                    .get(&t.url)
                    .header("accept", "text/plain;version=0.0.4")
                    .send()
                    .await
                    .ok()?;
                if !r.status().is_success() {
                    return None;
                }
                let bytes = r.bytes().await.ok()?;
                (bytes.len() <= MAX_BYTES).then(|| String::from_utf8_lossy(&bytes).into_owned())
            }
            .await;
            (t, body)
        }
    });
    futures::future::join_all(jobs).await
}

/// The families to add to hangard's own: `hangar_machine_metrics_up`, then
/// each sample name the machines gave, in OpenMetrics text.
pub(crate) fn render(fetched: &[(Target, Option<String>)]) -> String {
    let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = String::new();
    if !fetched.is_empty() {
        out.push_str(
            "# TYPE hangar_machine_metrics_up gauge\n# HELP hangar_machine_metrics_up Whether the machine's own metrics endpoint answered.\n",
        );
    }
    for (t, body) in fetched {
        let _ = writeln!(
            out,
            "hangar_machine_metrics_up{{app=\"{}\",machine=\"{}\"}} {}",
            escape(&t.app),
            escape(&t.machine),
            u8::from(body.is_some())
        );
        for line in body.as_deref().unwrap_or_default().lines() {
            if let Some((name, sample)) = relabel(line, &t.app, &t.machine) {
                families.entry(name).or_default().push(sample);
            }
        }
    }
    for (name, samples) in families {
        let _ = writeln!(out, "# TYPE {name} unknown");
        for s in samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// One sample line of Prometheus' text format with `app` and `machine`
/// added (timestamps dropped): its name and the line; `None` for comments,
/// blank or malformed lines and names under `hangar_`.
pub(crate) fn relabel(line: &str, app: &str, machine: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_name(name) || name.starts_with("hangar_") {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    if value.parse::<f64>().is_err() && !matches!(value, "NaN" | "+Inf" | "-Inf") {
        return None;
    }
    for (k, _) in labels.iter_mut() {
        if k == "app" || k == "machine" {
            *k = format!("exported_{k}");
        }
    }
    let mut all = vec![
        ("app".to_owned(), escape(app)),
        ("machine".to_owned(), escape(machine)),
    ];
    all.extend(labels);
    let labels: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    Some((
        name.to_owned(),
        format!("{name}{{{}}} {value}", labels.join(",")),
    ))
}

/// Labels up to the closing `}` (values kept escaped as written), and what
/// follows it.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        if !valid_name(key) {
            return None;
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        labels.push((key.to_owned(), rest[..end].to_owned()));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_get_the_machines_labels_and_keep_their_own() {
        let r = |l: &str| relabel(l, "web", "m1");
        assert_eq!(
            r("jobs_total{queue=\"a\"} 7"),
            Some((
                "jobs_total".into(),
                "jobs_total{app=\"web\",machine=\"m1\",queue=\"a\"} 7".into()
            ))
        );
        assert_eq!(
            r("up 1 1700000000000").unwrap().1,
            "up{app=\"web\",machine=\"m1\"} 1",
            "timestamps dropped"
        );
        assert_eq!(
            r("x{app=\"theirs\",path=\"/a,b}\\\"c\"} +Inf").unwrap().1,
            "x{app=\"web\",machine=\"m1\",exported_app=\"theirs\",path=\"/a,b}\\\"c\"} +Inf"
        );
        for bad in [
            "# HELP x y",
            "",
            "hangar_machines 3",
            "9bad 1",
            "x{unterminated=\"a} 1",
            "x notanumber",
        ] {
            assert_eq!(r(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn families_are_grouped_across_machines_with_their_up() {
        let t = |m: &str| Target {
            app: "web".into(),
            machine: m.into(),
            url: String::new(),
        };
        let text = render(&[
            (
                t("a"),
                Some("# TYPE q counter\nq_total 1\nlat_bucket{le=\"1\"} 2\n".into()),
            ),
            (t("b"), None),
            (t("c"), Some("q_total 5\n".into())),
        ]);
        assert_eq!(
            text,
            "# TYPE hangar_machine_metrics_up gauge\n\
             # HELP hangar_machine_metrics_up Whether the machine's own metrics endpoint answered.\n\
             hangar_machine_metrics_up{app=\"web\",machine=\"a\"} 1\n\
             hangar_machine_metrics_up{app=\"web\",machine=\"b\"} 0\n\
             hangar_machine_metrics_up{app=\"web\",machine=\"c\"} 1\n\
             # TYPE lat_bucket unknown\n\
             lat_bucket{app=\"web\",machine=\"a\",le=\"1\"} 2\n\
             # TYPE q_total unknown\n\
             q_total{app=\"web\",machine=\"a\"} 1\n\
             q_total{app=\"web\",machine=\"c\"} 5\n"
        );
        assert_eq!(render(&[]), "");
    }
}
