//! `/v1/suspensions`: scoped suspensions. A suspension holds one scope, sport, bookmaker or
//! route (for everyone or one client) until it is lifted or its `until` passes; every gateway
//! node refuses the requests it holds with the profile's `suspended` answer within its feed
//! interval. Emergency mode (`/v1/emergency`) stays the global switch.

use axum::extract::{FromRequestParts, Path, State};
use axum::Json;
use http::request::Parts;
use http::StatusCode;
use keygate_core::suspension::{RouteName, Suspension, Target};
use keygate_core::{Scope, Slug, SuspensionId};
use keygate_store::NewSuspension;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{JsonBody, Params};
use super::openapi as doc;
use super::{store_call, AdminState};

/// Longest client name or id a suspension may name (client names are at most 100
/// characters): longer input is refused before the store is asked.
const MAX_CLIENT: usize = 100;

/// A suspension to make: exactly one of `scope`, `sport`, `bookmaker` or `route`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = SuspensionCreate)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    /// Hold every route that requires this scope.
    #[schema(nullable = false, example = "cs2:markets:read")]
    scope: Option<String>,
    /// Hold every request naming this sport namespace.
    #[schema(nullable = false, example = "cs2")]
    sport: Option<String>,
    /// Hold every request naming this bookmaker.
    #[schema(nullable = false, example = "bet365")]
    bookmaker: Option<String>,
    /// Hold every request on the route of this name.
    #[schema(nullable = false)]
    route: Option<String>,
    /// Only this client's requests (its name or id); everyone's when absent.
    #[schema(nullable = false)]
    client: Option<String>,
    /// What callers read as the refusal's detail (1 to 500 printable characters).
    #[schema(nullable = false, min_length = 1, max_length = 500)]
    message: Option<String>,
    /// Lifted automatically at this instant (RFC 3339, in the future).
    #[schema(nullable = false, format = DateTime)]
    until: Option<String>,
}

impl CreateBody {
    /// Checks every field; the store checks the message and the client.
    ///
    /// # Errors
    /// `invalid_value` naming the field.
    pub(crate) fn validate(self) -> Result<NewSuspension, AdminError> {
        let given = [
            self.scope.is_some(),
            self.sport.is_some(),
            self.bookmaker.is_some(),
            self.route.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(AdminError::invalid_value(
                "scope",
                "give exactly one of `scope`, `sport`, `bookmaker` or `route`",
            ));
        }
        let target = if let Some(s) = self.scope {
            Target::Scope(
                Scope::new(&s).map_err(|e| AdminError::invalid_value("scope", e.to_string()))?,
            )
        } else if let Some(s) = self.sport {
            Target::Sport(
                Slug::new(&s).map_err(|e| AdminError::invalid_value("sport", e.to_string()))?,
            )
        } else if let Some(b) = self.bookmaker {
            Target::Bookmaker(
                Slug::new(&b).map_err(|e| AdminError::invalid_value("bookmaker", e.to_string()))?,
            )
        } else {
            let r = self.route.unwrap_or_default();
            Target::Route(
                RouteName::new(&r)
                    .map_err(|e| AdminError::invalid_value("route", e.to_string()))?,
            )
        };
        if let Some(c) = &self.client {
            if c.is_empty() || c.chars().count() > MAX_CLIENT {
                return Err(AdminError::invalid_value(
                    "client",
                    format!("a client name or id is 1 to {MAX_CLIENT} characters"),
                ));
            }
        }
        let until = super::instant("until", self.until)?;
        Ok(NewSuspension {
            target,
            client: self.client,
            message: self.message,
            until,
        })
    }
}

/// `GET /v1/suspensions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// `true`: every suspension ever made (lifted and run out too), newest first, at most
    /// 1000; otherwise only those in force, oldest first.
    all: Option<bool>,
}

/// A suspension id from the path (`sus_` + 16 characters).
#[derive(Debug)]
pub(crate) struct SuspensionPath(SuspensionId);

impl<S: Send + Sync> FromRequestParts<S> for SuspensionPath {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        let id = SuspensionId::parse(&raw).map_err(|e| AdminError::InvalidId(e.to_string()))?;
        Ok(SuspensionPath(id))
    }
}

/// `POST /v1/suspensions`.
#[utoipa::path(
    post,
    path = "/v1/suspensions",
    operation_id = "create_suspension",
    tag = "suspensions",
    summary = "Suspend a scope, sport, bookmaker or route",
    request_body = CreateBody,
    responses(
        (status = 201, description = "In force; every node refuses the requests it holds with `suspended` within its feed interval.", body = doc::Suspension),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many suspensions in force (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid, or `until` is past (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Suspension>), AdminError> {
    let new = body.validate()?;
    let s = store_call(state.store.create_suspension(&caller.actor, new)).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

/// `GET /v1/suspensions[?all=true]`.
#[utoipa::path(
    get,
    path = "/v1/suspensions",
    operation_id = "list_suspensions",
    tag = "suspensions",
    summary = "List the suspensions in force (or all)",
    params(ListQuery),
    responses(
        (status = 200, description = "The suspensions.", body = Vec<doc::Suspension>),
        (status = 400, description = "A query parameter is malformed (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<Vec<Suspension>>, AdminError> {
    let all = q.all.unwrap_or(false);
    Ok(Json(store_call(state.store.suspensions(all)).await?))
}

/// `GET /v1/suspensions/{id}`.
#[utoipa::path(
    get,
    path = "/v1/suspensions/{id}",
    operation_id = "show_suspension",
    tag = "suspensions",
    summary = "Show one suspension",
    params(("id" = String, Path, description = "The suspension's id (`sus_…`).")),
    responses(
        (status = 200, description = "The suspension, in force or not.", body = doc::Suspension),
        (status = 400, description = "Not a suspension id (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such suspension (`suspension_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    SuspensionPath(id): SuspensionPath,
) -> Result<Json<Suspension>, AdminError> {
    Ok(Json(store_call(state.store.suspension(id.as_str())).await?))
}

/// `DELETE /v1/suspensions/{id}`: lifts it (the record stays, with who lifted it and when).
#[utoipa::path(
    delete,
    path = "/v1/suspensions/{id}",
    operation_id = "lift_suspension",
    tag = "suspensions",
    summary = "Lift a suspension",
    params(("id" = String, Path, description = "The suspension's id (`sus_…`).")),
    responses(
        (status = 200, description = "Lifted; every node serves its requests again within its feed interval. Lifting one already lifted changes nothing.", body = doc::Suspension),
        (status = 400, description = "Not a suspension id (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such suspension (`suspension_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn lift(
    State(state): State<AdminState>,
    caller: Caller,
    SuspensionPath(id): SuspensionPath,
) -> Result<Json<Suspension>, AdminError> {
    Ok(Json(
        store_call(state.store.lift_suspension(&caller.actor, id.as_str())).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> Result<NewSuspension, AdminError> {
        serde_json::from_value::<CreateBody>(json)
            .unwrap()
            .validate()
    }

    #[test]
    fn exactly_one_valid_target() {
        let ok = body(serde_json::json!({"sport": "cs2", "message": "Integrity hold."})).unwrap();
        assert_eq!(ok.target, Target::Sport(Slug::new("cs2").unwrap()));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"sport": "cs2", "bookmaker": "bet365"}),
            serde_json::json!({"sport": "CS2"}),
            serde_json::json!({"scope": "cs2::read"}),
            serde_json::json!({"route": ""}),
            serde_json::json!({"route": "r".repeat(5000)}),
            serde_json::json!({"sport": "cs2", "until": "tomorrow"}),
            serde_json::json!({"sport": "cs2", "client": "c".repeat(101)}),
        ] {
            let e = body(bad.clone()).unwrap_err();
            assert_eq!(e.code(), "invalid_value", "{bad}");
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        }
        assert!(
            serde_json::from_value::<CreateBody>(serde_json::json!({"sport": "cs2", "x": 1}))
                .is_err()
        );
    }
}
