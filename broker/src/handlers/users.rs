//! User management: create, change, delete and list users. For superusers only, when clients
//! authenticate; anyone may on an anonymous broker (as with every other request there).

use super::OpError;
use crate::server::Context;
use rill_protocol::messages::{
    DeleteUserRequest, DeleteUserResponse, ListUsersRequest, ListUsersResponse, UpsertUserRequest,
    UpsertUserResponse,
};

/// Refuses a principal that may not manage users.
fn superuser(ctx: &Context, principal: Option<&str>) -> Result<(), OpError> {
    if !ctx.users.enabled() {
        return Ok(());
    }
    match principal {
        Some(p) if ctx.users.is_superuser(p) => Ok(()),
        Some(p) => Err(OpError::Denied(format!(
            "{p} may not manage users (superusers only)"
        ))),
        None => Err(OpError::Denied("not authenticated".into())),
    }
}

pub async fn upsert(
    ctx: std::sync::Arc<Context>,
    principal: Option<String>,
    req: UpsertUserRequest,
) -> Result<UpsertUserResponse, OpError> {
    superuser(&ctx, principal.as_deref())?;
    let c = ctx.clone();
    super::blocking(move || c.users.upsert(&req.user, req.credentials, req.must_exist))
        .await?
        .map_err(|e| OpError::Invalid(e.to_string()))?;
    Ok(UpsertUserResponse {})
}

pub async fn delete(
    ctx: std::sync::Arc<Context>,
    principal: Option<String>,
    req: DeleteUserRequest,
) -> Result<DeleteUserResponse, OpError> {
    superuser(&ctx, principal.as_deref())?;
    let c = ctx.clone();
    super::blocking(move || c.users.delete(&req.user))
        .await?
        .map_err(|e| OpError::Invalid(e.to_string()))?;
    Ok(DeleteUserResponse {})
}

pub fn list(
    ctx: &Context,
    principal: Option<&str>,
    _req: ListUsersRequest,
) -> Result<ListUsersResponse, OpError> {
    superuser(ctx, principal)?;
    Ok(ListUsersResponse {
        users: ctx.users.list(),
    })
}
