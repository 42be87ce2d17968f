//! `tidesync-hub token add|list|revoke`.

use std::process::ExitCode;

use sync_http::Tokens;

use crate::dburl::DbUrl;
use crate::{Failure, TokenCommand, connect, hub_failure, out};

pub(crate) async fn run(db: &DbUrl, command: TokenCommand) -> Result<ExitCode, Failure> {
    // Read before connecting: a prompt-less stdin must not wait on a
    // database timeout first.
    let target = match &command {
        TokenCommand::Revoke { target } if target == "-" => Some(read_stdin_token()?),
        TokenCommand::Revoke { target } => Some(target.clone()),
        _ => None,
    };
    let hub = connect(db).await?;
    let tokens = Tokens::open(hub.connection().clone())
        .await
        .map_err(|e| hub_failure(db, "cannot open the tokens table", &e))?;
    let code = match command {
        TokenCommand::Add { user } => {
            let token = tokens
                .add(&user)
                .await
                .map_err(|e| hub_failure(db, "cannot add a token", &e))?;
            eprintln!(
                "tidesync-hub: a new token for user {user:?} (shown only now; the hub keeps \
                 its hash). Give it to the device as its bearer token:"
            );
            out(&token);
            ExitCode::SUCCESS
        }
        TokenCommand::List => {
            let list = tokens
                .list()
                .await
                .map_err(|e| hub_failure(db, "cannot list the tokens", &e))?;
            if list.is_empty() {
                eprintln!("tidesync-hub: no tokens (make one with `token add USER`)");
            } else {
                let width = list
                    .iter()
                    .map(|t| t.user.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(4);
                out(&format!("{:<16}  {:<width$}  CREATED", "ID", "USER"));
                for t in &list {
                    out(&format!("{:<16}  {:<width$}  {}", t.id, t.user, t.created));
                }
            }
            ExitCode::SUCCESS
        }
        TokenCommand::Revoke { .. } => {
            let target = target.unwrap_or_default();
            let n = tokens
                .revoke(&target)
                .await
                .map_err(|e| hub_failure(db, "cannot revoke", &e))?;
            out(&format!(
                "revoked {n} token{}",
                if n == 1 { "" } else { "s" }
            ));
            if n == 0 {
                // Never repeats a token: it may be a live one of another hub.
                let what = if target.starts_with("tsk_") {
                    "that token".to_owned()
                } else {
                    format!("{target:?} (neither a token id nor a user with tokens)")
                };
                eprintln!("tidesync-hub: nothing to revoke: no match for {what}");
                ExitCode::from(crate::RUNTIME_ERROR)
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    Ok(code)
}

/// The token on stdin, for `revoke -`.
fn read_stdin_token() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::runtime(format!("cannot read the token from stdin: {e}")))?;
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(Failure::runtime("no token on stdin"));
    }
    Ok(token)
}
