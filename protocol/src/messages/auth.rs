//! Authentication (SASL, Kafka's two-step shape) and the users a broker knows.

use crate::acl::{Acl, AclFilter};
use crate::api::{ApiKey, Message};
use crate::scram::{Credential, Mechanism};
use serde::{Deserialize, Serialize};

/// Chooses the SASL mechanism; answered with the mechanisms the broker offers (also when the
/// one asked for is not among them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslHandshakeRequest {
    pub mechanism: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslHandshakeResponse {
    pub mechanisms: Vec<String>,
}

impl Message for SaslHandshakeRequest {
    const API_KEY: ApiKey = ApiKey::SaslHandshake;
    type Response = SaslHandshakeResponse;
}

/// One message of the mechanism's exchange (for SCRAM: client-first, then client-final).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslAuthenticateRequest {
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslAuthenticateResponse {
    pub bytes: Vec<u8>,
    /// Set on the last step: the principal the connection now acts as.
    pub principal: Option<String>,
}

impl Message for SaslAuthenticateRequest {
    const API_KEY: ApiKey = ApiKey::SaslAuthenticate;
    type Response = SaslAuthenticateResponse;
}

/// Creates a user, or replaces the credentials of one. The client derives them (salt, keys)
/// so the password never leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertUserRequest {
    pub user: String,
    pub credentials: Vec<Credential>,
    /// Refuse if the user exists (create) or if it does not (set-password).
    pub must_exist: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertUserResponse {}

impl Message for UpsertUserRequest {
    const API_KEY: ApiKey = ApiKey::UpsertUser;
    type Response = UpsertUserResponse;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteUserRequest {
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteUserResponse {}

impl Message for DeleteUserRequest {
    const API_KEY: ApiKey = ApiKey::DeleteUser;
    type Response = DeleteUserResponse;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListUsersRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user: String,
    pub mechanisms: Vec<Mechanism>,
    pub superuser: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListUsersResponse {
    pub users: Vec<UserSummary>,
}

impl Message for ListUsersRequest {
    const API_KEY: ApiKey = ApiKey::ListUsers;
    type Response = ListUsersResponse;
}

/// Adds access control entries (those already present are kept once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAclsRequest {
    pub acls: Vec<Acl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAclsResponse {
    /// How many of them were new.
    pub added: u32,
}

impl Message for CreateAclsRequest {
    const API_KEY: ApiKey = ApiKey::CreateAcls;
    type Response = CreateAclsResponse;
}

/// Removes the entries equal to these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAclsRequest {
    pub acls: Vec<Acl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAclsResponse {
    /// How many were there to remove.
    pub removed: u32,
}

impl Message for DeleteAclsRequest {
    const API_KEY: ApiKey = ApiKey::DeleteAcls;
    type Response = DeleteAclsResponse;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAclsRequest {
    pub filter: AclFilter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAclsResponse {
    pub acls: Vec<Acl>,
}

impl Message for ListAclsRequest {
    const API_KEY: ApiKey = ApiKey::ListAcls;
    type Response = ListAclsResponse;
}

/// A principal's limits, each per second over all its connections (`None`: no limit). A
/// request over them is not refused: its answer is held back, and its connection reads
/// nothing more, until the rate is back under the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Record-batch bytes produced.
    pub produce_bytes_per_sec: Option<u64>,
    /// Record-batch bytes fetched.
    pub fetch_bytes_per_sec: Option<u64>,
    /// Requests of any kind.
    pub requests_per_sec: Option<u64>,
}

/// Sets a principal's quota (`*`: every principal without one of its own), or removes it
/// (`quota: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterQuotaRequest {
    pub principal: String,
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterQuotaResponse {}

impl Message for AlterQuotaRequest {
    const API_KEY: ApiKey = ApiKey::AlterQuota;
    type Response = AlterQuotaResponse;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuotasRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuotasResponse {
    pub quotas: Vec<(String, Quota)>,
}

impl Message for ListQuotasRequest {
    const API_KEY: ApiKey = ApiKey::ListQuotas;
    type Response = ListQuotasResponse;
}
