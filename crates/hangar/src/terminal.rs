//! Attaching the user's terminal to a command in a machine: raw mode while
//! attached (restored on every way out), keystrokes to the machine (Ctrl-C
//! included: it interrupts the command there, not this CLI), output to
//! stdout, window-size changes forwarded. Without a terminal on stdin
//! (scripts, tests) bytes are passed through as they are.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use hangar_client::{TtyEvent, TtySession};
use tokio::io::AsyncReadExt;

/// The window size of the terminal on stdout (or stdin), else 24x80.
pub fn window_size() -> (u16, u16) {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills a winsize; failure leaves it zeroed.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return (ws.ws_row, ws.ws_col);
        }
    }
    (24, 80)
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enable() -> anyhow::Result<Option<RawMode>> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(
            stdin.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Runs the session to its end; returns the command's exit code.
pub async fn attach(session: TtySession) -> anyhow::Result<i32> {
    let (mut input, mut output) = session.split();
    let _raw = RawMode::enable()?;
    let mut stdin = tokio::io::stdin();
    let mut stdin_open = true;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut buf = vec![0u8; 8192];
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => input.send(&buf[..n]).await?,
            },
            _ = winch.recv() => {
                let (rows, cols) = window_size();
                input.resize(rows, cols).await?;
            }
            ev = output.next() => match ev {
                Some(Ok(TtyEvent::Output(bytes))) => {
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                Some(Ok(TtyEvent::Exit(code))) => return Ok(code),
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the connection to the machine closed"),
            },
        }
    }
}
