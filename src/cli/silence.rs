//! `silence add|list|expire`: silences kept in the store, whether the router runs or not (a
//! running router reads them within a second).

use crate::silence::{Matcher, NewSilence, Silence};
use crate::store::{Store, now_ms};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// `silence`'s subcommand and store.
#[derive(Debug, Args)]
pub(super) struct SilenceArgs {
    #[command(subcommand)]
    command: SilenceCommand,
    #[command(flatten)]
    store: super::StoreArgs,
}

#[derive(Debug, Subcommand)]
enum SilenceCommand {
    /// Keep the notifications of matching events from going out for a while.
    Add {
        /// FIELD=VALUE of the canonical event, by equality or glob (`lead.email=*@acme.example`);
        /// repeat for several, all of which must match.
        #[arg(long = "match", value_name = "FIELD=VALUE", required = true, value_parser = matcher)]
        matchers: Vec<Matcher>,
        /// Only this rule's notifications.
        #[arg(long)]
        rule: Option<String>,
        /// How long (`2h`, `7d`).
        #[arg(long = "for", value_name = "DURATION", value_parser = duration)]
        duration: Duration,
        /// Why (shown by `silence list`).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// The silences in force (`--all`: ended ones too, while history keeps them).
    List {
        /// Ended silences too.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Expire {
        /// The silence's id.
        id: String,
    },
}

fn matcher(s: &str) -> Result<Matcher, String> {
    Matcher::parse(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("{s:?} is not a duration like 2h or 7d"))
}

/// Adds, lists or expires silences.
pub(super) async fn silence(args: SilenceArgs) -> ExitCode {
    // A silence may be added before the router first ran: the store is created then.
    let opened = match &args.command {
        SilenceCommand::Add { .. } => Store::open(&args.store.url)
            .await
            .map_err(|e| e.to_string()),
        _ => args.store.open_existing().await,
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard silence: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        SilenceCommand::Add {
            matchers,
            rule,
            duration,
            comment,
        } => add(&store, matchers, rule, duration, comment).await,
        SilenceCommand::List { all, json } => list(&store, all, json).await,
        SilenceCommand::Expire { id } => match store.expire_silence(&id, now_ms()).await {
            Ok(true) => {
                println!("Silence {id} expired.");
                Ok(())
            }
            Ok(false) => Err(format!("no silence in force with id {id}")),
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard silence: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn add(
    store: &Store,
    matchers: Vec<Matcher>,
    rule: Option<String>,
    duration: Duration,
    comment: String,
) -> Result<(), String> {
    let new = NewSilence {
        matchers,
        rule,
        duration,
        comment,
    };
    let silence = new.start()?;
    store
        .add_silence(&silence.to_row())
        .await
        .map_err(|e| e.to_string())?;
    let view = silence.view(now_ms());
    println!("Silence {} added, until {}.", view.id, view.ends_at);
    Ok(())
}

async fn list(store: &Store, all: bool, json: bool) -> Result<(), String> {
    let now = now_ms();
    let rows = store
        .silences(if all { 0 } else { now })
        .await
        .map_err(|e| e.to_string())?;
    let views: Vec<_> = rows
        .into_iter()
        .filter_map(Silence::from_row)
        .map(|s| s.view(now))
        .collect();
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "silences": views }));
        println!("{}", text.map_err(|e| e.to_string())?);
        return Ok(());
    }
    if views.is_empty() {
        println!("No silences{}.", if all { "" } else { " in force" });
        return Ok(());
    }
    println!(
        "{:<36}  {:<24}  {:<7}  {:<14}  MATCHES  COMMENT",
        "ID", "ENDS", "ACTIVE", "RULE"
    );
    for v in views {
        println!(
            "{:<36}  {:<24}  {:<7}  {:<14}  {}  {}",
            v.id,
            v.ends_at,
            if v.active { "yes" } else { "no" },
            v.rule.as_deref().unwrap_or("(any)"),
            v.matchers.join(" "),
            v.comment
        );
    }
    Ok(())
}
