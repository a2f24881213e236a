//! A terminal on a command inside a microVM. The vmshim's ctl socket
//! carries the session: hangard writes one [`Request::Tty`] line, then
//! reads the guest's reply, its [`FromGuest::TtyOutput`] lines and a last
//! [`FromGuest::TtyExit`], while it writes [`ToGuest::TtyInput`] and
//! [`ToGuest::TtyResize`] lines up; closing the connection hangs the
//! session up (its command gets SIGHUP in the guest).

use std::io;
use std::path::Path;

use hangar_core::guest::{FromGuest, Reply, Request, ToGuest};
use hangar_runtime::{Terminal, TtyRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::mpsc;

/// The host side of a terminal session in a VM.
pub(crate) struct VmTerminal {
    reader: BufReader<OwnedReadHalf>,
    /// A line being read (kept across cancelled reads).
    line: Vec<u8>,
    /// Output read but not yet handed out.
    pending: Vec<u8>,
    exit: Option<i32>,
    up: mpsc::UnboundedSender<ToGuest>,
}

/// Opens a session on the shim's ctl socket `ctl`; fails with the guest's
/// message when the command cannot start.
pub(crate) async fn open(ctl: &Path, req: &TtyRequest) -> io::Result<VmTerminal> {
    let conn = tokio::net::UnixStream::connect(ctl).await?;
    let (r, mut w) = conn.into_split();
    let mut line = serde_json::to_vec(&Request::Tty {
        argv: req.argv.clone(),
        env: req.env.clone(),
        rows: req.rows,
        cols: req.cols,
    })
    .map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reader = BufReader::new(r);
    let mut first = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reader.read_until(b'\n', &mut first),
    )
    .await
    .map_err(|_| io::Error::other("the VM did not answer"))??;
    match serde_json::from_slice::<FromGuest>(&first) {
        Ok(FromGuest::Reply {
            body: Reply::Ok, ..
        }) => {}
        Ok(FromGuest::Reply {
            body: Reply::Error { message },
            ..
        }) => return Err(io::Error::other(message)),
        _ => return Err(io::Error::other("the VM's supervisor gave no answer")),
    }
    // Input goes up through one task, so `resize` (not async) can send too.
    let (up, mut rx) = mpsc::unbounded_channel::<ToGuest>();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&msg) else {
                continue;
            };
            line.push(b'\n');
            if w.write_all(&line).await.is_err() {
                break;
            }
        }
        // Every sender is gone (the terminal was dropped): hang up.
        let _ = w.shutdown().await;
    });
    Ok(VmTerminal {
        reader,
        line: Vec::new(),
        pending: Vec::new(),
        exit: None,
        up,
    })
}

impl VmTerminal {
    /// The next piece of output, or `None` at the end (after the exit, or
    /// when the VM went away). Cancel safe: a partly read line stays in
    /// `self.line`.
    async fn next_output(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.exit.is_some() {
                return Ok(None);
            }
            let n = self.reader.read_until(b'\n', &mut self.line).await?;
            if n == 0 || !self.line.ends_with(b"\n") {
                return Ok(None);
            }
            let msg = serde_json::from_slice::<FromGuest>(&self.line);
            self.line.clear();
            match msg {
                Ok(FromGuest::TtyOutput { data, .. }) => return Ok(Some(data)),
                Ok(FromGuest::TtyExit { exit_code, .. }) => self.exit = Some(exit_code),
                _ => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl Terminal for VmTerminal {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            match self.next_output().await? {
                Some(data) => self.pending = data,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.up
            .send(ToGuest::TtyInput {
                id: 0,
                data: data.to_vec(),
            })
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        self.up
            .send(ToGuest::TtyResize { id: 0, rows, cols })
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn wait(&mut self) -> io::Result<i32> {
        while self.exit.is_none() {
            if self.next_output().await?.is_none() && self.exit.is_none() {
                return Err(io::Error::other("the VM ended before the command did"));
            }
        }
        Ok(self.exit.unwrap_or(-1))
    }
}
