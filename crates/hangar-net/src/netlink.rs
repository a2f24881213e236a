//! A machine's link made over rtnetlink, in this process: no `ip` or
//! `nsenter` run per machine. On hosts where starting a process is dear
//! (every dynamically linked program asks the CPU for its cache sizes, and
//! under some hypervisors each such question traps), the three tools a
//! link took were a fifth of the CPU time of a machine's create.
//!
//! Each call runs on a thread of its own with a small single-threaded
//! runtime: the namespace's side is done after that thread has joined the
//! namespace with `setns(2)`, which changes only the calling thread, and a
//! netlink socket belongs to the namespace it was opened in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, State};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Bridge, Link, NetError};

fn nl_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink { op, source }
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    move |e| NetError::Tool {
        tool: "netlink",
        message: format!("{op}: {e}"),
    }
}

/// Runs `f` with a netlink handle on a thread of its own, first joining
/// the network namespace pinned at `netns` if one is given.
fn on_thread<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = netns {
                let file = std::fs::File::open(ns).map_err(io_err("open the namespace"))?;
                // SAFETY: setns on a namespace fd; it changes only this
                // thread, which ends with this closure.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io_err("join the namespace")(std::io::Error::last_os_error()));
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(io_err("start a runtime"))?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io_err("open a netlink socket"))?;
                let conn = tokio::spawn(conn);
                let r = f(handle).await;
                conn.abort();
                r
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Tool {
                tool: "netlink",
                message: "the netlink thread panicked".into(),
            })
        })
    })
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // No such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err("look up a link")(e)),
    }
}

async fn delete_named(handle: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(i) = index_of(handle, name).await? {
        match handle.link().del(i).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            r => r.map_err(nl_err("remove a link"))?,
        }
    }
    Ok(())
}

/// The host's side: the veth pair made with its `eth0` end in the
/// namespace, its host end on the bridge and up, and the host's neighbor
/// entries for the addresses dropped. A half-made link of the same name
/// is removed first. The caller holds the bridges lock.
pub(crate) fn host_side(netns: &Path, bridge: &Bridge, link: &Link) -> Result<(), NetError> {
    let ns = std::fs::File::open(netns).map_err(io_err("open the namespace"))?;
    on_thread(None, |h| async move {
        let master = index_of(&h, &bridge.name)
            .await?
            .ok_or_else(|| NetError::Invalid(format!("no bridge {}", bridge.name)))?;
        delete_named(&h, &link.host_if).await?;
        let add = |h: Handle| {
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name("eth0".to_owned())
                .setns_by_fd(ns.as_raw_fd())
                .build();
            let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(link.host_if.clone())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .controller(master)
                .up()
                .build();
            async move { h.link().add(msg).execute().await }
        };
        if let Err(first) = add(h.clone()).await {
            // Something else named eth0 in the namespace: remove it and
            // anything made here, and try once more.
            tracing::debug!(link = %link.host_if, error = %first, "veth pair not made; retrying");
            delete_named(&h, &link.host_if).await?;
            on_thread(
                Some(netns),
                |hn| async move { delete_named(&hn, "eth0").await },
            )?;
            add(h.clone()).await.map_err(nl_err("make the veth pair"))?;
        }
        for addr in [IpAddr::V4(link.address4), IpAddr::V6(link.address6)] {
            let mut msg = NeighbourMessage::default();
            msg.header.ifindex = master;
            msg.header.family = match addr {
                IpAddr::V4(_) => AddressFamily::Inet,
                IpAddr::V6(_) => AddressFamily::Inet6,
            };
            msg.attributes
                .push(NeighbourAttribute::Destination(match addr {
                    IpAddr::V4(a) => NeighbourAddress::Inet(a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(a),
                }));
            // Nothing to drop is the usual case.
            let _ = h.neighbours().del(msg).execute().await;
        }
        Ok(())
    })
}

/// The namespace's side: `eth0` with the link's addresses (the IPv6 one
/// without duplicate address detection), up, and default routes through
/// the bridge's gateways.
pub(crate) fn inside(netns: &Path, bridge: &Bridge, link: &Link) -> Result<(), NetError> {
    on_thread(Some(netns), |h| async move {
        let eth0 = index_of(&h, "eth0")
            .await?
            .ok_or_else(|| NetError::Invalid("no eth0 in the namespace".into()))?;
        h.address()
            .add(eth0, IpAddr::V4(link.address4), bridge.prefix4)
            .replace()
            .execute()
            .await
            .map_err(nl_err("add the IPv4 address"))?;
        let mut v6 = h
            .address()
            .add(eth0, IpAddr::V6(link.address6), bridge.prefix6)
            .replace();
        v6.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        v6.execute().await.map_err(nl_err("add the IPv6 address"))?;
        h.link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(nl_err("bring eth0 up"))?;
        wait_until_passing(&h, eth0).await?;
        let defaults = [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(bridge.gateway4)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(bridge.gateway6)
                .build(),
        ];
        for route in defaults {
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl_err("add a default route"))?;
        }
        Ok(())
    })
}

/// How long a new link may take to pass traffic before it is left to
/// catch up on its own.
pub(crate) const PASSING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until the link `index` passes traffic. A veth end brought up
/// has its carrier at once, but the kernel activates its queue (and tells
/// the bridge) a moment later, from a work queue; until then what it
/// sends is dropped. The first neighbor request lost that way costs the
/// host's first contact with the machine a second (the retransmit time).
async fn wait_until_passing(h: &Handle, index: u32) -> Result<(), NetError> {
    let deadline = tokio::time::Instant::now() + PASSING_WAIT;
    loop {
        let mut links = h.link().get().match_index(index).execute();
        let up = links
            .try_next()
            .await
            .map_err(nl_err("look up a link"))?
            .is_some_and(|l| {
                l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
            });
        if up {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(index, "a new link does not pass traffic yet");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Removes the host link `name` if it is there.
pub(crate) fn remove(name: &str) -> Result<(), NetError> {
    on_thread(None, |h| async move { delete_named(&h, name).await })
}
