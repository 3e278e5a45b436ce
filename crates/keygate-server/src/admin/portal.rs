//! `/v1/clients/{client}/portal/invite`: makes an address a portal user of the client and mails
//! it a sign-in link (`keygate portal invite` over the admin API).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{ClientPath, JsonBody};
use super::openapi as doc;
use super::AdminState;
use crate::portal::{self, Invitation, InviteError};

/// Whom to invite.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = PortalInvite)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    /// The person's e-mail address; it becomes one of the client's portal users.
    #[schema(example = "ann@acme.example")]
    email: String,
}

/// `POST /v1/clients/{client}/portal/invite` → 201 with the sign-in link.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/portal/invite",
    operation_id = "invite_portal_user",
    tag = "portal",
    summary = "Invite a person to the customer portal: mail (and return) a single-use sign-in link",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    request_body = InviteBody,
    responses(
        (status = 201, description = "The sign-in link (valid 15 minutes, single use), and whether it was mailed.", body = doc::PortalInvitation),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`), or no portal on this node (`portal_not_configured`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The address is a portal user of another client (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A missing or unknown field, or a bad address (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The mail relay refused or could not be reached (`mail_failed`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn invite(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    JsonBody(body): JsonBody<InviteBody>,
) -> Result<(StatusCode, Json<Invitation>), AdminError> {
    let gw = state.gateway();
    let settings = gw
        .config
        .portal
        .as_ref()
        .ok_or(AdminError::PortalNotConfigured)?;
    // Not under `store_call`'s budget: the SMTP conversation has its own (longer) timeout, and
    // the store calls inside are bounded by the pool's acquire timeout.
    match portal::invite(&state.store, settings, &caller.actor, &client, &body.email).await {
        Ok(invitation) => Ok((StatusCode::CREATED, Json(invitation))),
        Err(InviteError::Store(e)) => Err(e.into()),
        Err(InviteError::Mail(e)) => Err(AdminError::MailFailed(e.to_string())),
    }
}
