//! `hangar tokens`: app tokens, as `fly tokens` manages deploy tokens.

use clap::Subcommand;
use hangar_api_types::CreateAppTokenRequest;
use hangar_client::Client;

use super::machine::AppArg;
use crate::output::Output;

/// `hangar tokens ...`.
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// List the app's tokens (--app, else fly.toml's app; every app's
    /// without either, admin token only).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Mint a token that acts on one app only. Minted with an app token, it
    /// expires no later than that token.
    #[command(subcommand)]
    Create(CreateCmd),
    /// Revoke a token (and every token it minted).
    Revoke {
        /// Token id (`tok_...`, from `hangar tokens list`).
        id: String,
        /// The app (--app, else fly.toml's; needed with an app token).
        #[command(flatten)]
        app: AppArg,
    },
}

/// `hangar tokens create ...`.
#[derive(Debug, Subcommand)]
pub enum CreateCmd {
    /// A deploy token: everything on one app.
    Deploy {
        #[command(flatten)]
        app: AppArg,
        /// Lifetime, e.g. 24h or 720h (default: no expiry).
        #[arg(long, short = 'x')]
        expiry: Option<String>,
        /// A name to tell it apart in listings.
        #[arg(long, short = 'n', default_value = "deploy")]
        name: String,
    },
}

/// Runs a `hangar tokens` command.
pub async fn run(cmd: &TokensCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        TokensCmd::List { app } => {
            let tokens = c.list_tokens(app.get().ok()).await?;
            if out.json {
                return out.print_json(&tokens);
            }
            out.table(
                &["ID", "APP", "NAME", "CREATED AT", "EXPIRES AT"],
                tokens
                    .into_iter()
                    .map(|t| {
                        let expires = match (t.expires_at, t.expired) {
                            (Some(e), true) => format!("{e} (expired)"),
                            (Some(e), false) => e,
                            (None, _) => "never".into(),
                        };
                        vec![t.id, t.app, t.name, t.created_at, expires]
                    })
                    .collect(),
            );
        }
        TokensCmd::Create(CreateCmd::Deploy { app, expiry, name }) => {
            let created = c
                .create_token(
                    app.get()?,
                    &CreateAppTokenRequest {
                        name: Some(name.clone()),
                        expiry: expiry.clone(),
                    },
                )
                .await?;
            if out.json {
                return out.print_json(&created);
            }
            // The token alone on stdout, as flyctl prints it.
            println!("{}", created.token);
        }
        TokensCmd::Revoke { id, app } => {
            c.revoke_token(app.get().ok(), id).await?;
            println!("Revoked {id}");
        }
    }
    Ok(())
}
