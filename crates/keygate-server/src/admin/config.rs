//! `POST /v1/reload`: read the node's configuration file again and put it in force
//! (`crate::state::reload`). It reloads the node that answers; a cluster's nodes are reloaded
//! one by one (each reads its own file).

use axum::extract::State;
use axum::Json;

use super::auth::Caller;
use super::error::AdminError;
use super::openapi as doc;
use super::AdminState;

/// `POST /v1/reload`.
#[utoipa::path(
    post,
    path = "/v1/reload",
    operation_id = "reload",
    tag = "config",
    summary = "Reload this node's configuration file",
    responses(
        (status = 200, description = "The file is in force (or was already): its version, hash, and the settings that need a restart to change.", body = doc::Reloaded),
        (status = 409, description = "The node was started without a configuration file (`no_config_file`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file cannot be read (`config_unreadable`), has errors (`invalid_config`, each in `errors` with its line), or names certificate files that cannot be used (`tls_files_refused`); the configuration in force keeps serving.", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn reload(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, AdminError> {
    // `admin:NAME`, the token's name as every admin write records it.
    let reloaded = crate::state::reload::reload(&state.live, &caller.actor.0).await?;
    Ok(Json(reloaded.to_json()))
}
