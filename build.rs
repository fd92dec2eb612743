//! Build script: rebuilds the crate when a migration is added or changed. `sqlx::migrate!`
//! embeds `migrations/` at compile time, and Cargo does not otherwise watch files outside the
//! Rust sources (the build script `cargo sqlx migrate build-script` generates).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
