//! Integration tests: the real router served on port 0 and driven over HTTP, delivering to real
//! peers (an HTTP stand-in for Slack and other endpoints, an SMTP server), and the real binary
//! for `check` and `test`.

mod actions;
mod browser;
mod cli;
mod console;
mod digests;
mod durable;
mod email;
mod escaping;
mod explain;
mod hostile;
mod hosts;
mod hours;
mod intake;
mod layout;
mod matching;
mod memory;
mod observability;
mod postgres;
mod properties;
mod reload;
mod security;
mod silences;
mod sources;
mod util;
mod windows;
