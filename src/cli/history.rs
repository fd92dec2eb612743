//! `dlq` and `deliveries`: dead letters and delivery history, read from the store whether the
//! router runs or not.

use crate::store::{DeliveryStatus, DeliveryView, Filter};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// `dlq`'s subcommand and store.
#[derive(Debug, Args)]
pub(super) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    #[command(flatten)]
    store: super::StoreArgs,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters with their attempts.
    List,
    /// Send one dead letter (or all of them) again.
    Retry {
        /// The dead letter's id.
        #[arg(required_unless_present = "all")]
        id: Option<i64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Drop a dead letter for good.
    Discard {
        /// The dead letter's id.
        id: i64,
    },
}

/// `deliveries`' filters and store.
#[derive(Debug, Args)]
pub(super) struct DeliveriesArgs {
    /// Only this status: pending, sending, delivered, dead, discarded, skipped, suppressed.
    #[arg(long, value_parser = status_parser())]
    status: Option<DeliveryStatus>,
    /// Only this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Only this lead (email).
    #[arg(long)]
    lead: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: super::StoreArgs,
}

/// `--status`: one of the statuses' names (clap lists them when another is given).
fn status_parser() -> impl TypedValueParser<Value = DeliveryStatus> {
    PossibleValuesParser::new(DeliveryStatus::names())
        .map(|name| name.parse().expect("a status's own name"))
}

/// Lists, retries or discards dead letters.
pub(super) async fn dlq(args: DlqArgs) -> ExitCode {
    let store = match args.store.open_existing().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard dlq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        match args.command {
            DlqCommand::List => {
                let filter = Filter::dead_letters();
                store.list(&filter).await.map(|list| {
                    if list.is_empty() {
                        println!("No dead letters.");
                    }
                    print_deliveries(&list, true);
                })
            }
            DlqCommand::Retry { id, all } => store
                .retry_dead(if all { None } else { id })
                .await
                .map(|n| match (n, id) {
                    (0, Some(id)) if !all => println!("No dead letter with id {id}."),
                    (n, _) => println!(
                        "Requeued {n} dead letter(s); a running router sends them within a second."
                    ),
                }),
            DlqCommand::Discard { id } => store.discard(id).await.map(|found| {
                if found {
                    println!("Discarded dead letter {id}.");
                } else {
                    println!("No dead letter with id {id}.");
                }
            }),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard dlq: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints delivery history, newest first.
pub(super) async fn deliveries(args: DeliveriesArgs) -> ExitCode {
    let store = match args.store.open_existing().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard deliveries: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = Filter {
        status: args.status,
        rule: args.rule,
        lead: args.lead,
        limit: Some(args.limit),
        with_history: args.json,
    };
    match store.list(&filter).await {
        Ok(list) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(list) => {
            print_deliveries(&list, false);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard deliveries: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_deliveries(list: &[DeliveryView], history: bool) {
    if list.is_empty() {
        return;
    }
    println!(
        "{:<6} {:<10} {:<9} {:<24} {:<18} {:<28} {:>3}  LAST ERROR OR REASON",
        "ID", "STATUS", "ACTION", "RULE", "EVENT", "LEAD", "TRY"
    );
    for d in list {
        // A digest's delivery stands for its events: it shows how many instead of its last.
        let (event, lead) = match d.digest_items {
            Some(n) => (format!("digest of {n}"), "-"),
            None => (d.event_type.clone(), d.lead_email.as_deref().unwrap_or("-")),
        };
        println!(
            "{:<6} {:<10} {:<9} {:<24} {:<18} {:<28} {:>3}  {}",
            d.id,
            d.status,
            d.action,
            d.rule,
            event,
            lead,
            d.attempts,
            d.last_error
                .as_deref()
                .or(d.reason.as_deref())
                .unwrap_or("")
        );
        if history {
            for a in &d.history {
                let code = a.status_code.map(|c| format!(" {c}")).unwrap_or_default();
                println!(
                    "         {} {}{code} ({} ms) {}",
                    a.at,
                    a.outcome,
                    a.duration_ms,
                    a.error.as_deref().unwrap_or("")
                );
            }
        }
    }
}
