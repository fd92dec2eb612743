//! A PostgreSQL schema of its own for one benchmark run, so that a run never starts on the
//! backlog an earlier one left: `Schema::create(url, prefix)` makes it and gives the store URL
//! that works in it; `drop` removes it and all it holds.

/// A schema created for one run.
pub struct Schema {
    /// A connection outside the schema (to create, drop, and flush).
    pub admin: sqlx::PgPool,
    /// The store URL, the server's with `search_path` set to the schema.
    pub url: String,
    name: String,
}

impl Schema {
    /// Creates a schema named `prefix` and a fresh id on the server at `url`.
    pub async fn create(url: &str, prefix: &str) -> Schema {
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        let admin = sqlx::PgPool::connect(url)
            .await
            .expect("the PostgreSQL server named by SWITCHBOARD_BENCH_POSTGRES_URL answers");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options[search_path]={name}");
        Schema { admin, url, name }
    }

    /// Drops the schema and all it holds.
    pub async fn drop(self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap();
    }
}
