//! `hangar dashboard`: opens hangard's web dashboard in a browser, logged
//! in with this CLI's token (the token travels once in the URL; the page
//! swaps it for an HttpOnly cookie and drops it from the address bar).

use clap::Args;

/// `hangar dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Print the login URL instead of opening a browser.
    #[arg(long)]
    print: bool,
}

/// The dashboard's login URL for `api_url` and `token`.
pub(crate) fn login_url(api_url: &str, token: &str) -> String {
    let token: String = token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{}/ui/?token={token}", api_url.trim_end_matches('/'))
}

/// Runs `hangar dashboard`.
pub fn run(args: &DashboardArgs, api_url: &str, token: &str) -> anyhow::Result<()> {
    let url = login_url(api_url, token);
    let page = format!("{}/ui/", api_url.trim_end_matches('/'));
    if !args.print {
        for opener in ["xdg-open", "sensible-browser", "open"] {
            let spawned = std::process::Command::new(opener)
                .arg(&url)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            if spawned.is_ok() {
                println!("Opening {page} in your browser");
                return Ok(());
            }
        }
        println!("No browser to open here; open this URL (it logs you in):");
    }
    println!("{url}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_is_escaped_in_the_url() {
        assert_eq!(
            super::login_url("http://127.0.0.1:4280/", "ab+c/d=="),
            "http://127.0.0.1:4280/ui/?token=ab%2Bc%2Fd%3D%3D"
        );
    }
}
