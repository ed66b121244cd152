//! Users and ACLs: create, change, delete and list them. Users are for superusers only when
//! clients authenticate (anyone may on an anonymous broker, as with every other request there);
//! ACLs need `alter` (to change) or `describe` (to list) on the cluster, which the dispatcher
//! checks. A change is checked here, then saved on a single node or committed through the
//! metadata log in a cluster (`auth::Change`).

use super::OpError;
use super::access::Checker;
use crate::auth::{Change, UserError};
use crate::server::Context;
use rill_protocol::messages::{
    AlterQuotaRequest, AlterQuotaResponse, CreateAclsRequest, CreateAclsResponse,
    DeleteAclsRequest, DeleteAclsResponse, DeleteUserRequest, DeleteUserResponse, ListAclsRequest,
    ListAclsResponse, ListQuotasRequest, ListQuotasResponse, ListUsersRequest, ListUsersResponse,
    UpsertUserRequest, UpsertUserResponse,
};
use std::sync::Arc;

/// Refuses a principal that may not manage users.
fn superuser(checker: &Checker) -> Result<(), OpError> {
    match checker.principal() {
        None => Ok(()),
        Some(p) => Err(OpError::Denied(format!(
            "{p} may not manage users (superusers only)"
        ))),
    }
}

/// Checks and makes `change`; what it counted (users or entries changed).
async fn make(ctx: Arc<Context>, change: Change, must_exist: Option<bool>) -> Result<u32, OpError> {
    let invalid = |e: UserError| OpError::Invalid(e.to_string());
    let count = ctx.security.check(&change, must_exist).map_err(invalid)?;
    if let Some(cluster) = &ctx.cluster {
        cluster
            .propose(&crate::cluster::Command::Security(change))
            .await
            .map_err(|why| OpError::Route(crate::cluster::RouteError::Unavailable(why)))?;
        return Ok(count);
    }
    let c = ctx.clone();
    super::blocking(move || c.security.commit(change))
        .await?
        .map_err(invalid)?;
    Ok(count)
}

pub async fn upsert(
    ctx: Arc<Context>,
    checker: Checker,
    req: UpsertUserRequest,
) -> Result<UpsertUserResponse, OpError> {
    superuser(&checker)?;
    let change = Change::UpsertUser {
        user: req.user,
        credentials: req.credentials,
    };
    make(ctx, change, req.must_exist).await?;
    Ok(UpsertUserResponse {})
}

pub async fn delete(
    ctx: Arc<Context>,
    checker: Checker,
    req: DeleteUserRequest,
) -> Result<DeleteUserResponse, OpError> {
    superuser(&checker)?;
    make(ctx, Change::DeleteUser { user: req.user }, None).await?;
    Ok(DeleteUserResponse {})
}

pub fn list(
    ctx: &Context,
    checker: &Checker,
    _req: ListUsersRequest,
) -> Result<ListUsersResponse, OpError> {
    superuser(checker)?;
    Ok(ListUsersResponse {
        users: ctx.security.list(),
    })
}

pub async fn create_acls(
    ctx: Arc<Context>,
    req: CreateAclsRequest,
) -> Result<CreateAclsResponse, OpError> {
    let added = make(ctx, Change::AddAcls(req.acls), None).await?;
    Ok(CreateAclsResponse { added })
}

pub async fn delete_acls(
    ctx: Arc<Context>,
    req: DeleteAclsRequest,
) -> Result<DeleteAclsResponse, OpError> {
    let removed = make(ctx, Change::RemoveAcls(req.acls), None).await?;
    Ok(DeleteAclsResponse { removed })
}

pub fn list_acls(ctx: &Context, req: ListAclsRequest) -> ListAclsResponse {
    ListAclsResponse {
        acls: ctx.security.acls(&req.filter),
    }
}

pub async fn alter_quota(
    ctx: Arc<Context>,
    req: AlterQuotaRequest,
) -> Result<AlterQuotaResponse, OpError> {
    let change = Change::SetQuota {
        principal: req.principal,
        quota: req.quota,
    };
    make(ctx, change, None).await?;
    Ok(AlterQuotaResponse {})
}

pub fn list_quotas(ctx: &Context, _req: ListQuotasRequest) -> ListQuotasResponse {
    ListQuotasResponse {
        quotas: ctx.security.quotas(),
    }
}
