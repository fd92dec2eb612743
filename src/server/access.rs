//! Admin access: who may use `/-/reload` and `/api/…`. With `SWITCHBOARD_ADMIN_TOKEN` set, a
//! bearer token is required; without it, only a router on loopback serves them.

use super::State;
use crate::credentials::Secret;
use std::net::SocketAddr;
use std::sync::Arc;
use warp::Filter;

/// Who may use the admin endpoints (`/-/reload`, `/api/…`).
pub struct AdminAccess {
    admin_token: Option<Secret>,
    loopback_only: bool,
}

impl AdminAccess {
    /// For a router listening on `listen`: the admin endpoints need `admin_token`, which is
    /// required unless the router listens on loopback only.
    pub fn new(listen: SocketAddr, admin_token: Option<String>) -> Self {
        AdminAccess {
            admin_token: admin_token.filter(|t| !t.is_empty()).map(Secret::new),
            loopback_only: listen.ip().is_loopback(),
        }
    }

    /// Whether the admin endpoints are closed to everyone (beyond loopback with no token).
    pub fn closed(&self) -> bool {
        self.admin_token.is_none() && !self.loopback_only
    }

    /// Whether a request with this `Authorization` header may use the admin endpoints.
    fn admit_admin(&self, authorization: Option<&str>) -> Result<(), Refused> {
        match &self.admin_token {
            Some(token) => {
                let offered = authorization
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::trim);
                if offered.is_some_and(|t| token.matches(t)) {
                    Ok(())
                } else {
                    Err(Refused::Unauthorized(
                        "a bearer token is required: Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN",
                    ))
                }
            }
            None if self.loopback_only => Ok(()),
            None => Err(Refused::Forbidden(
                "the admin API is off: the router listens beyond loopback and SWITCHBOARD_ADMIN_TOKEN is not set",
            )),
        }
    }
}

/// Why an admin request, or a rate-limited webhook, was refused.
#[derive(Debug)]
pub(super) enum Refused {
    Unauthorized(&'static str),
    Forbidden(&'static str),
    RateLimited(std::time::Duration),
}
impl warp::reject::Reject for Refused {}

/// Passes requests that may use the admin endpoints.
pub(super) fn admin_only(
    state: Arc<State>,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |h: Option<String>| {
            let state = state.clone();
            async move {
                state
                    .access
                    .admit_admin(h.as_deref())
                    .map_err(warp::reject::custom)
            }
        })
        .untuple_one()
}
