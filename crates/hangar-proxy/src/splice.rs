//! Relay of a plain TCP connection, each direction on its own: bytes go
//! through a small buffer at first, as in any relay, and once a read fills
//! it (a bulk transfer, not a request and its answer) the direction
//! switches to `splice(2)`, socket → pipe → socket, so that the bytes no
//! longer pass through the proxy's memory (the kernel hands page
//! references along). Small messages stay on `read`/`write`, which cost
//! less per message than a splice through a pipe. HAProxy's `splice-auto`
//! works the same way. Used for raw TCP services when neither end is TLS
//! or a tunnel; the others go through [`tokio::io::copy_bidirectional`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// A pipe's capacity: larger than the 64 KiB default so that one splice
/// takes what a socket holds after a burst (fewer wake-ups per MiB).
const PIPE_SIZE: i32 = 1 << 20;

/// One direction's pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A smaller pipe (the limit in /proc/sys/fs/pipe-max-size, or a
        // user over its pipe quota) still works, with more wake-ups.
        let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1 << 16);
        Ok(Pipe { read, write, size })
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// The buffer a direction starts with; a read that fills it switches the
/// direction to splice.
const BUFFER: usize = 16 << 10;

/// What one direction moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    /// Bytes.
    pub bytes: u64,
    /// Whether it switched to splice.
    pub spliced: bool,
}

/// Moves `from`'s bytes to `to` until `from` ends, then ends `to`'s
/// writing half (as [`tokio::io::copy_bidirectional`] does).
async fn one_way(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> io::Result<Moved> {
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    // Reads through `AsyncRead`, which takes a short read as the socket
    // drained (edge-triggered epoll), saving the `EAGAIN` read a bare
    // `try_read` loop makes per message.
    let pipe = loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return end(to, total, false).await;
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        if n == buf.len() {
            // Without a pipe (out of descriptors), stay on copies.
            if let Ok(pipe) = Pipe::new() {
                break pipe;
            }
        }
    };
    drop(buf);
    let (from, to): (&TcpStream, &TcpStream) = (from.as_ref(), to.as_ref());
    loop {
        // Socket → pipe. The pipe is empty here, so `EAGAIN` can only mean
        // the socket has nothing to read.
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, &pipe.write, None, pipe.size, FLAGS)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(Moved {
                bytes: total,
                spliced: true,
            });
        }
        // Pipe → socket, all of it, before reading more.
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, to.as_fd(), None, left, FLAGS).map_err(io::Error::from)
                })
                .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        total += n as u64;
    }
}

/// `from` has ended before any splice: so does `to`'s writing half.
async fn end(mut to: WriteHalf<'_>, bytes: u64, spliced: bool) -> io::Result<Moved> {
    let _ = to.shutdown().await;
    Ok(Moved { bytes, spliced })
}

/// Relays `a` ⇄ `b` until both directions have ended (or one fails); what
/// each way moved, `a` → `b` first.
pub(crate) async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(Moved, Moved)> {
    let ((ar, aw), (br, bw)) = (a.split(), b.split());
    tokio::try_join!(one_way(ar, bw), one_way(br, aw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_and_half_closes() {
        // client ⇄ [proxy_a | splice | proxy_b] ⇄ server
        let (mut client, mut proxy_a) = pair().await;
        let (mut proxy_b, mut server) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b).await });

        // Up: more than a pipe holds, so that the direction switches to
        // splice and its loop goes round. Down: a few bytes, copied.
        let up: Vec<u8> = (0..3 * PIPE_SIZE as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        let down: Vec<u8> = (0..BUFFER / 3).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut r, mut w) = server.split();
            let (read, wrote) = tokio::join!(r.read_to_end(&mut got), async {
                w.write_all(&down2).await?;
                w.shutdown().await
            });
            read.unwrap();
            wrote.unwrap();
            got
        });
        let (mut r, mut w) = client.split();
        let mut got = Vec::new();
        let (read, wrote) = tokio::join!(r.read_to_end(&mut got), async {
            w.write_all(&up2).await?;
            w.shutdown().await
        });
        read.unwrap();
        wrote.unwrap();
        assert_eq!(got, down);
        assert_eq!(server_side.await.unwrap(), up);
        let (a, b) = relay.await.unwrap().unwrap();
        let moved = |bytes: usize, spliced| Moved {
            bytes: bytes as u64,
            spliced,
        };
        assert_eq!((a, b), (moved(up.len(), true), moved(down.len(), false)));
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error() {
        let (client, mut proxy_a) = pair().await;
        let (mut proxy_b, _server) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut proxy_a, &mut proxy_b).await });
        // Linger 0: close sends RST.
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), relay)
            .await
            .expect("the relay ends")
            .unwrap();
        assert!(out.is_err(), "{out:?}");
    }
}
