//! switchboard: a rules-based notification router for SmartLead webhooks.
//!
//! [`run`] (in [`router`]) is the composition root: it builds everything below from
//! [`Options`] and serves it on a listener until shutdown; the command line ([`cli`]) and the
//! integration tests both start the router through it. An event travels through the crate in
//! this order:
//!
//! 1. [`server`] receives `POST /webhooks/{source}`, checks the source's [`credentials`] and
//!    reads the body;
//! 2. [`event`] normalises the payload into the canonical [`event::Event`] (each tool is a
//!    [`event::Source`]; SmartLead sends two shapes);
//! 3. [`rules`] matches it against the compiled, indexed rule set of the current configuration
//!    ([`app`] holds it and swaps it on reload);
//! 4. [`store`] commits the event and its deliveries (one group commit serves many requests)
//!    before the `200`, with the decisions of rule [`memory`] (counts, `once`, throttles,
//!    windows) taken in the same transaction; [`silence`]s and [`time_window`]s hold back what
//!    should not go out now;
//! 5. [`delivery`] sends each (event, rule, action) from a worker: it renders it with
//!    [`template`] and sends it through one of the [`actions`] (Slack, email, HTTP, log),
//!    retrying on its own schedule until it is delivered or becomes a dead letter.
//!
//! [`config`] loads, validates and compiles the rules files and templates (shared by `serve`,
//! `check`, `test` and reload), reporting every problem as a [`diagnostic`] at the
//! [`syntax`] position it was written at, with `${VAR}` from [`env`](mod@env); [`metrics`]
//! counts what happens for `/metrics`.

pub mod actions;
pub mod app;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod delivery;
pub mod diagnostic;
pub mod env;
pub mod event;
pub mod explain;
pub mod files;
pub mod intern;
pub mod memory;
pub mod metrics;
pub mod router;
pub mod rules;
pub mod server;
pub mod silence;
pub mod store;
pub mod syntax;
pub mod template;
pub mod time_window;

pub use router::{Options, StartError, run};
