//! The internal DNS server machines use, with Fly's `.internal` names.
//!
//! It answers on the gateway address of each private network (what every
//! machine's `resolv.conf` names), from a [`Directory`] of apps and
//! machines that hangard's state provides:
//!
//! | name                                  | answer                                  |
//! |---------------------------------------|-----------------------------------------|
//! | `<app>.internal`                      | AAAA of the app's started machines      |
//! | `<region>.<app>.internal`             | those in one region                     |
//! | `<machine_id>.vm.<app>.internal`      | AAAA of that machine (any state)        |
//! | `<group>.process.<app>.internal`      | started machines of a process group     |
//! | `_apps.internal`                      | TXT: the apps, comma separated          |
//! | `vms.<app>.internal`                  | TXT: `<machine_id> <region>,...`        |
//! | `regions.<app>.internal`              | TXT: regions with started machines      |
//!
//! A machine only sees the apps on its own network. Other names are
//! relayed to the host's resolvers. Only the UDP transport is served; the
//! answers are small.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Time to live of the answers (seconds): machines come and go.
const TTL: u32 = 5;

/// One machine as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its app.
    pub app: String,
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Its process group (`metadata.fly_process_group`), if any.
    pub process_group: Option<String>,
    /// Its private (6PN) address.
    pub addr: Ipv6Addr,
    /// Whether it is started.
    pub started: bool,
}

/// Where the server finds machines.
pub trait Directory: Send + Sync + 'static {
    /// The machines (not destroyed) on the network whose gateway is
    /// `gateway`.
    fn machines(&self, gateway: IpAddr) -> Vec<Entry>;
}

/// A parsed `.internal` question.
#[derive(Debug, PartialEq, Eq)]
enum Internal<'a> {
    Apps,
    App { app: &'a str },
    Region { app: &'a str, region: &'a str },
    Machine { app: &'a str, id: &'a str },
    Process { app: &'a str, group: &'a str },
    Vms { app: &'a str },
    Regions { app: &'a str },
    Unknown,
}

/// Labels of `name` without the trailing `internal`, or `None` when it is
/// not an `.internal` name.
fn internal_labels(name: &str) -> Option<Vec<&str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let rest = name.strip_suffix("internal")?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_suffix('.')?;
    Some(rest.split('.').collect())
}

fn parse<'a>(labels: &[&'a str]) -> Internal<'a> {
    match labels {
        ["_apps"] => Internal::Apps,
        [app] => Internal::App { app },
        ["vms", app] => Internal::Vms { app },
        ["regions", app] => Internal::Regions { app },
        [region, app] => Internal::Region { app, region },
        [id, "vm", app] => Internal::Machine { app, id },
        [group, "process", app] => Internal::Process { app, group },
        _ => Internal::Unknown,
    }
}

/// What to answer: addresses or texts; `None` is "no such name".
enum Answer {
    Addrs(Vec<Ipv6Addr>),
    Txt(String),
}

fn resolve(q: &Internal<'_>, machines: &[Entry]) -> Option<Answer> {
    let of_app = |app: &str| -> Vec<&Entry> {
        machines
            .iter()
            .filter(|m| m.app.eq_ignore_ascii_case(app))
            .collect()
    };
    let started = |v: Vec<&Entry>| -> Vec<Ipv6Addr> {
        v.into_iter()
            .filter(|m| m.started)
            .map(|m| m.addr)
            .collect()
    };
    let known = |app: &str| !of_app(app).is_empty();
    match q {
        Internal::Apps => {
            let apps: BTreeSet<&str> = machines.iter().map(|m| m.app.as_str()).collect();
            Some(Answer::Txt(apps.into_iter().collect::<Vec<_>>().join(",")))
        }
        Internal::App { app } => known(app).then(|| Answer::Addrs(started(of_app(app)))),
        Internal::Region { app, region } => known(app).then(|| {
            Answer::Addrs(started(
                of_app(app)
                    .into_iter()
                    .filter(|m| m.region.eq_ignore_ascii_case(region))
                    .collect(),
            ))
        }),
        Internal::Process { app, group } => known(app).then(|| {
            Answer::Addrs(started(
                of_app(app)
                    .into_iter()
                    .filter(|m| m.process_group.as_deref() == Some(*group))
                    .collect(),
            ))
        }),
        Internal::Machine { app, id } => of_app(app)
            .into_iter()
            .find(|m| m.id.eq_ignore_ascii_case(id))
            .map(|m| Answer::Addrs(vec![m.addr])),
        Internal::Vms { app } => known(app).then(|| {
            Answer::Txt(
                of_app(app)
                    .into_iter()
                    .filter(|m| m.started)
                    .map(|m| format!("{} {}", m.id, m.region))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }),
        Internal::Regions { app } => known(app).then(|| {
            let regions: BTreeSet<&str> = of_app(app)
                .into_iter()
                .filter(|m| m.started)
                .map(|m| m.region.as_str())
                .collect();
            Answer::Txt(regions.into_iter().collect::<Vec<_>>().join(","))
        }),
        Internal::Unknown => None,
    }
}

/// Builds the reply to an `.internal` question (`None`: not one of ours).
fn answer_internal(query: &Message, directory: &dyn Directory, gateway: IpAddr) -> Option<Message> {
    let q = query.queries().first()?;
    let qname = q.name().to_ascii().to_ascii_lowercase();
    let labels = internal_labels(&qname)?;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    let machines = directory.machines(gateway);
    let name: Name = q.name().clone();
    match resolve(&parse(&labels), &machines) {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some(Answer::Addrs(addrs)) => {
            if matches!(q.query_type(), RecordType::AAAA | RecordType::ANY) {
                for a in addrs {
                    reply.add_answer(Record::from_rdata(name.clone(), TTL, RData::AAAA(AAAA(a))));
                }
            }
        }
        Some(Answer::Txt(text)) => {
            if matches!(q.query_type(), RecordType::TXT | RecordType::ANY) {
                let mut r = Record::from_rdata(name, TTL, RData::TXT(TXT::new(vec![text])));
                r.set_dns_class(DNSClass::IN);
                reply.add_answer(r);
            }
        }
    }
    Some(reply)
}

/// The host's resolvers, from `/etc/resolv.conf` (port 53).
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Relays a query to the first upstream that answers.
async fn relay(packet: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(packet, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            if from == *up && n >= 2 && buf[..2] == packet[..2] {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

/// The DNS server: one UDP socket per network gateway, sharing one
/// [`Directory`].
pub struct Server {
    directory: Arc<dyn Directory>,
    upstreams: Vec<SocketAddr>,
    port: u16,
    listening: Mutex<HashMap<IpAddr, tokio::task::JoinHandle<()>>>,
}

impl Server {
    /// A server answering from `directory`, relaying other names to
    /// `upstreams`, on `port` (53 in production).
    pub fn new(directory: Arc<dyn Directory>, upstreams: Vec<SocketAddr>, port: u16) -> Arc<Self> {
        Arc::new(Server {
            directory,
            upstreams,
            port,
            listening: Mutex::new(HashMap::new()),
        })
    }

    /// Starts answering on `gateway` (idempotent). The address need not
    /// exist yet (the socket is bound with `IP_FREEBIND`): the bridge that
    /// carries it may be made a moment later.
    pub fn listen(self: &Arc<Self>, gateway: IpAddr) -> std::io::Result<()> {
        let mut listening = self.listening.lock().unwrap_or_else(|p| p.into_inner());
        if listening.contains_key(&gateway) {
            return Ok(());
        }
        let addr = SocketAddr::new(gateway, self.port);
        let domain = if gateway.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if gateway.is_ipv4() {
            s.set_freebind_v4(true)?;
        } else {
            s.set_only_v6(true)?;
            s.set_freebind_v6(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        let sock = Arc::new(UdpSocket::from_std(s.into())?);
        let me = Arc::clone(self);
        let task = tokio::spawn(async move { me.serve(sock, gateway).await });
        listening.insert(gateway, task);
        tracing::debug!(%addr, "internal DNS listening");
        Ok(())
    }

    async fn serve(self: Arc<Self>, sock: Arc<UdpSocket>, gateway: IpAddr) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "internal DNS receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let packet = buf[..n].to_vec();
            let me = Arc::clone(&self);
            let sock = Arc::clone(&sock);
            tokio::spawn(async move {
                if let Some(reply) = me.handle(&packet, gateway).await {
                    let _ = sock.send_to(&reply, peer).await;
                }
            });
        }
    }

    /// The reply to one query packet (`None`: drop it).
    pub async fn handle(&self, packet: &[u8], gateway: IpAddr) -> Option<Vec<u8>> {
        let Ok(query) = Message::from_vec(packet) else {
            // Not DNS, or not parseable: a FORMERR when there is an id.
            if packet.len() < 12 {
                return None;
            }
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        };
        if query.message_type() != MessageType::Query {
            return None;
        }
        if let Some(reply) = answer_internal(&query, self.directory.as_ref(), gateway) {
            return reply.to_vec().ok();
        }
        match relay(packet, &self.upstreams).await {
            Some(r) => Some(r),
            None => Message::error_msg(query.id(), query.op_code(), ResponseCode::ServFail)
                .to_vec()
                .ok(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for (_, t) in self
            .listening
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    struct Fixed(Vec<Entry>);
    impl Directory for Fixed {
        fn machines(&self, _gateway: IpAddr) -> Vec<Entry> {
            self.0.clone()
        }
    }

    fn entry(app: &str, id: &str, region: &str, n: u16, started: bool) -> Entry {
        Entry {
            app: app.into(),
            id: id.into(),
            region: region.into(),
            process_group: Some("app".into()),
            addr: Ipv6Addr::new(0xfdaa, 0, 1, 0, 0, 0, 0, n),
            started,
        }
    }

    fn ask(server: &Server, name: &str, t: RecordType) -> Message {
        let mut q = Message::new();
        q.set_id(7)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_utf8(name).unwrap(), t));
        let bytes =
            futures_lite(server.handle(&q.to_vec().unwrap(), "fdaa:0:1::1".parse().unwrap()));
        Message::from_vec(&bytes.unwrap()).unwrap()
    }

    fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn aaaa(m: &Message) -> Vec<String> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    fn txt(m: &Message) -> String {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_parse() {
        let p = |n: &str| internal_labels(n).map(|l| format!("{:?}", parse(&l)));
        assert_eq!(p("web.internal."), Some("App { app: \"web\" }".into()));
        assert_eq!(p("example.com."), None);
        assert_eq!(p("notinternal."), None);
        assert_eq!(p("_apps.internal"), Some("Apps".into()));
        assert_eq!(
            p("abc.vm.web.internal."),
            Some("Machine { app: \"web\", id: \"abc\" }".into())
        );
        assert_eq!(p("a.b.c.d.internal."), Some("Unknown".into()));
    }

    #[test]
    fn answers_internal_names() {
        let s = Server::new(
            Arc::new(Fixed(vec![
                entry("web", "aaa", "local", 2, true),
                entry("web", "bbb", "ams", 3, true),
                entry("web", "ccc", "local", 4, false),
                entry("db", "ddd", "local", 5, true),
            ])),
            Vec::new(),
            0,
        );
        let r = ask(&s, "web.internal.", RecordType::AAAA);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert_eq!(aaaa(&r), vec!["fdaa:0:1::2", "fdaa:0:1::3"]);
        assert_eq!(r.id(), 7);
        let r = ask(&s, "LOCAL.Web.internal.", RecordType::AAAA);
        assert_eq!(aaaa(&r), vec!["fdaa:0:1::2"]);
        let r = ask(&s, "ccc.vm.web.internal.", RecordType::AAAA);
        assert_eq!(aaaa(&r), vec!["fdaa:0:1::4"]);
        let r = ask(&s, "app.process.web.internal.", RecordType::AAAA);
        assert_eq!(aaaa(&r).len(), 2);
        // An A question for a known name: no data, no error.
        let r = ask(&s, "web.internal.", RecordType::A);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.answers().is_empty());
        let r = ask(&s, "nope.internal.", RecordType::AAAA);
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        let r = ask(&s, "zzz.vm.web.internal.", RecordType::AAAA);
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert_eq!(txt(&ask(&s, "_apps.internal.", RecordType::TXT)), "db,web");
        assert_eq!(
            txt(&ask(&s, "vms.web.internal.", RecordType::TXT)),
            "aaa local,bbb ams"
        );
        assert_eq!(
            txt(&ask(&s, "regions.web.internal.", RecordType::TXT)),
            "ams,local"
        );
    }

    #[test]
    fn other_names_fail_cleanly_without_upstreams() {
        let s = Server::new(Arc::new(Fixed(Vec::new())), Vec::new(), 0);
        let r = ask(&s, "example.com.", RecordType::A);
        assert_eq!(r.response_code(), ResponseCode::ServFail);
        let garbage = futures_lite(s.handle(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
            "10.0.0.1".parse().unwrap(),
        ));
        let m = Message::from_vec(&garbage.unwrap()).unwrap();
        assert_eq!(m.response_code(), ResponseCode::FormErr);
        assert!(futures_lite(s.handle(&[1], "10.0.0.1".parse().unwrap())).is_none());
    }
}
