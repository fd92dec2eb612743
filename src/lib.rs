//! switchboard: a rules-based notification router for SmartLead webhooks.
//!
//! An event travels through the crate in this order:
//!
//! 1. [`server`] receives `POST /webhooks/{source}` on a warp server and answers at once;
//! 2. [`event`] normalises the payload (SmartLead sends two shapes) into the canonical event;
//! 3. [`rules`] matches it against the compiled, indexed rule set of the current [`config`];
//! 4. [`delivery`] hands each (event, rule, action) to a worker, which renders it with
//!    [`template`] and sends it through one of the [`actions`] (Slack, email, HTTP, log).
//!
//! [`config`] loads, validates and compiles the rules files and templates (shared by `serve`,
//! `check`, `test` and hot reload); [`cli`] is the command line; [`app`] holds the state the
//! server and the workers share (the current configuration, reload status).

pub mod actions;
pub mod app;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod delivery;
pub mod diagnostic;
pub mod env;
pub mod event;
pub mod metrics;
pub mod router;
pub mod rules;
pub mod server;
pub mod store;
pub mod syntax;
pub mod template;

pub use router::{Options, StartError, run};
