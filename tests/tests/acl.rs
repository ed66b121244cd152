//! Authorization against the real daemon: for each operation on each resource type, a
//! principal allowed it succeeds and one without it, or with a deny beside the allow, gets
//! `NotAuthorized`; prefix entries match; topics and groups a principal may not describe are
//! left out of lists and metadata; a member id works only for the principal that joined; `rill
//! acl` adds, lists and removes entries.

use futures::future::BoxFuture;
use rill_client::acl::{Acl, CLUSTER, Operation, PatternType, Permission, ResourceType};
use rill_client::{
    Admin, Client, Error, ErrorCode, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use rill_e2e::{as_user, auth_broker, rill_with_env};
use rill_protocol::messages::{
    AssignmentStrategy, CreateAclsRequest, DescribeGroupRequest, FetchRequest, InitProducerRequest,
    JoinGroupRequest, ListAclsRequest, ResetTo,
};
use std::time::Duration;

fn code(r: &Result<(), Error>) -> Option<ErrorCode> {
    match r {
        Err(Error::Broker { code, .. }) => Some(*code),
        _ => None,
    }
}

fn acl(
    principal: &str,
    resource: ResourceType,
    pattern: PatternType,
    name: &str,
    op: Operation,
    permission: Permission,
) -> Acl {
    Acl {
        principal: principal.into(),
        resource,
        pattern,
        name: name.into(),
        operation: op,
        permission,
    }
}

fn topic(name: &str) -> rill_protocol::TopicName {
    rill_protocol::TopicName::new(name).unwrap()
}

type Request = Box<dyn Fn(Client) -> BoxFuture<'static, Result<(), Error>>>;

/// One cell of the matrix: the operation on a resource, the request that needs it, what the
/// superuser prepares first, and what every principal of the cell is given besides (so that
/// only the cell's own entry decides).
struct Case {
    resource: ResourceType,
    name: String,
    op: Operation,
    request: Request,
    extra: Vec<(ResourceType, String, Operation)>,
}

async fn user(admin: &Admin, addr: &str, name: &str) -> Client {
    admin.create_user(name, "pw").await.unwrap();
    Client::connect_with(addr, as_user(name, "pw"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_on_each_resource_is_allowed_or_refused_by_the_acls() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("data"), &[]);
    let addr = broker.addr().to_string();
    let su = Client::connect_with(&addr, as_user("admin", "admin-secret"))
        .await
        .unwrap();
    let admin = Admin::new(su.clone());
    for t in [
        "t-write",
        "t-read",
        "t-delete",
        "t-alter",
        "t-describe",
        "t-join",
        "t-reset",
    ] {
        admin
            .create_topic(t, 1, TopicConfig::default())
            .await
            .unwrap();
    }
    // Groups with committed offsets, for describe and delete.
    for g in ["g-describe", "g-delete"] {
        admin
            .reset_offsets(g, "t-read", ResetTo::Earliest)
            .await
            .unwrap();
    }

    use Operation::*;
    use ResourceType::{Cluster, Group, Topic};
    let mut cases: Vec<Case> = Vec::new();
    let mut case = |resource,
                    name: &str,
                    op,
                    request: Request,
                    extra: Vec<(ResourceType, &str, Operation)>| {
        cases.push(Case {
            resource,
            name: name.to_string(),
            op,
            request,
            extra: extra
                .into_iter()
                .map(|(r, n, o)| (r, n.to_string(), o))
                .collect(),
        })
    };
    case(
        Topic,
        "t-write",
        Write,
        Box::new(|c| {
            Box::pin(async move {
                let p = Producer::new(c, ProducerConfig::default());
                let d = p.send(ProducerRecord::new("t-write", "v")).await?;
                d.await.map(|_| ())
            })
        }),
        vec![],
    );
    case(
        Topic,
        "t-read",
        Read,
        Box::new(|c| {
            Box::pin(async move {
                c.call(&FetchRequest {
                    topic: topic("t-read"),
                    partition: 0,
                    offset: 0,
                    max_bytes: 1024,
                    min_bytes: 0,
                    max_wait_ms: 0,
                    max_records: 0,
                })
                .await
                .map(|_| ())
            })
        }),
        vec![],
    );
    case(
        Topic,
        "t-create",
        Create,
        Box::new(|c| {
            Box::pin(async move {
                Admin::new(c)
                    .create_topic("t-create", 1, TopicConfig::default())
                    .await
            })
        }),
        vec![],
    );
    case(
        Topic,
        "t-delete",
        Delete,
        Box::new(|c| Box::pin(async move { Admin::new(c).delete_topic("t-delete").await })),
        vec![],
    );
    case(
        Topic,
        "t-alter",
        Alter,
        Box::new(|c| {
            Box::pin(async move {
                let changes = TopicConfig {
                    retention_ms: Some(3_600_000),
                    ..TopicConfig::default()
                };
                Admin::new(c)
                    .alter_topic("t-alter", changes)
                    .await
                    .map(|_| ())
            })
        }),
        vec![],
    );
    case(
        Topic,
        "t-describe",
        Describe,
        Box::new(|c| {
            Box::pin(async move { Admin::new(c).describe_topic("t-describe").await.map(|_| ()) })
        }),
        vec![],
    );
    case(
        Group,
        "g-join",
        Read,
        Box::new(|c| {
            Box::pin(async move {
                c.call(&JoinGroupRequest {
                    group: "g-join".into(),
                    member_id: None,
                    client: "acl-test".into(),
                    topics: vec![topic("t-join")],
                    session_timeout_ms: 10_000,
                    strategy: AssignmentStrategy::Sticky,
                })
                .await
                .map(|_| ())
            })
        }),
        vec![(Topic, "t-join", Describe)],
    );
    case(
        Group,
        "g-describe",
        Describe,
        Box::new(|c| {
            Box::pin(async move {
                c.call(&DescribeGroupRequest {
                    group: "g-describe".into(),
                })
                .await
                .map(|_| ())
            })
        }),
        vec![],
    );
    case(
        Group,
        "g-delete",
        Delete,
        Box::new(|c| Box::pin(async move { Admin::new(c).delete_group("g-delete").await })),
        vec![],
    );
    case(
        Group,
        "g-reset",
        Alter,
        Box::new(|c| {
            Box::pin(async move {
                Admin::new(c)
                    .reset_offsets("g-reset", "t-reset", ResetTo::Latest)
                    .await
                    .map(|_| ())
            })
        }),
        vec![(Topic, "t-reset", Describe)],
    );
    case(
        Cluster,
        CLUSTER,
        Create,
        Box::new(|c| {
            Box::pin(async move {
                Admin::new(c)
                    .create_topic("c-create", 1, TopicConfig::default())
                    .await
            })
        }),
        vec![],
    );
    case(
        Cluster,
        CLUSTER,
        Alter,
        Box::new(|c| {
            Box::pin(async move {
                let entry = acl(
                    "nobody",
                    Topic,
                    PatternType::Literal,
                    "x",
                    Read,
                    Permission::Allow,
                );
                c.call(&CreateAclsRequest { acls: vec![entry] })
                    .await
                    .map(|_| ())
            })
        }),
        vec![],
    );
    case(
        Cluster,
        CLUSTER,
        Describe,
        Box::new(|c| {
            Box::pin(async move {
                c.call(&ListAclsRequest {
                    filter: Default::default(),
                })
                .await
                .map(|_| ())
            })
        }),
        vec![],
    );
    case(
        Cluster,
        CLUSTER,
        Write,
        Box::new(|c| {
            Box::pin(async move {
                c.call(&InitProducerRequest {
                    producer_name: Some("acl-test".into()),
                })
                .await
                .map(|_| ())
            })
        }),
        vec![],
    );

    for (i, case) in cases.iter().enumerate() {
        let label = format!("{:?} {} {:?}", case.op, case.resource, case.name);
        let (yes, no, denied) = (format!("yes{i}"), format!("no{i}"), format!("deny{i}"));
        // Every other cell is allowed by prefix rather than by name.
        let (pattern, name) = match case.resource {
            Cluster => (PatternType::Literal, case.name.clone()),
            _ if i % 2 == 1 => (PatternType::Prefix, case.name[..3].to_string()),
            _ => (PatternType::Literal, case.name.clone()),
        };
        let mut entries = Vec::new();
        for p in [&yes, &no, &denied] {
            for (r, n, o) in &case.extra {
                entries.push(acl(p, *r, PatternType::Literal, n, *o, Permission::Allow));
            }
        }
        for p in [&yes, &denied] {
            entries.push(acl(
                p,
                case.resource,
                pattern,
                &name,
                case.op,
                Permission::Allow,
            ));
        }
        // The deny is by prefix where it can be: deny wins over the allow whatever its form.
        let deny_pattern = if case.resource == Cluster {
            PatternType::Literal
        } else {
            PatternType::Prefix
        };
        let deny_name = if case.resource == Cluster {
            CLUSTER.to_string()
        } else {
            case.name[..2].to_string()
        };
        entries.push(acl(
            &denied,
            case.resource,
            deny_pattern,
            &deny_name,
            case.op,
            Permission::Deny,
        ));
        admin.create_acls(entries).await.unwrap();

        for p in [&no, &denied] {
            let c = user(&admin, &addr, p).await;
            let r = (case.request)(c).await;
            assert_eq!(
                code(&r),
                Some(ErrorCode::NotAuthorized),
                "{label} as {p}: {r:?}"
            );
        }
        let c = user(&admin, &addr, &yes).await;
        let r = (case.request)(c).await;
        assert!(r.is_ok(), "{label} as {yes}: {r:?}");
    }
    let refused = broker.log().matches("request refused").count();
    assert!(
        refused >= 2 * cases.len(),
        "each refusal is logged ({refused})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_principal_may_not_describe_is_invisible_and_members_belong_to_who_joined() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("data"), &[]);
    let addr = broker.addr().to_string();
    let su = Client::connect_with(&addr, as_user("admin", "admin-secret"))
        .await
        .unwrap();
    let admin = Admin::new(su.clone());
    for t in ["vis-a", "vis-b", "hid-c"] {
        admin
            .create_topic(t, 2, TopicConfig::default())
            .await
            .unwrap();
    }
    for g in ["vis-g", "hid-g"] {
        admin
            .reset_offsets(g, "vis-a", ResetTo::Earliest)
            .await
            .unwrap();
    }
    let entries = vec![
        acl(
            "viewer",
            ResourceType::Topic,
            PatternType::Prefix,
            "vis-",
            Operation::Describe,
            Permission::Allow,
        ),
        acl(
            "viewer",
            ResourceType::Group,
            PatternType::Prefix,
            "vis-",
            Operation::Describe,
            Permission::Allow,
        ),
    ];
    admin.create_acls(entries).await.unwrap();
    let viewer = Admin::new(user(&admin, &addr, "viewer").await);

    let topics: Vec<String> = viewer
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(topics, ["vis-a", "vis-b"]);
    let all: Vec<String> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(
        all,
        ["hid-c", "vis-a", "vis-b"],
        "the superuser sees everything"
    );
    let meta = viewer.metadata(&[]).await.unwrap();
    let named: Vec<String> = meta.topics.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(named, ["vis-a", "vis-b"]);
    assert!(viewer.metadata(&["hid-c"]).await.unwrap().topics.is_empty());
    let e = viewer.describe_topic("hid-c").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Broker {
                code: ErrorCode::NotAuthorized,
                ..
            }
        ),
        "{e}"
    );
    // A topic that does not exist is refused alike: asking does not tell what exists.
    let e = viewer.describe_topic("hid-missing").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Broker {
                code: ErrorCode::NotAuthorized,
                ..
            }
        ),
        "{e}"
    );
    let groups: Vec<String> = viewer
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.group)
        .collect();
    assert_eq!(groups, ["vis-g"]);

    // Alice joins; Mallory, allowed the same group and topic, cannot use her member id.
    let mut entries = Vec::new();
    for p in ["alice", "mallory"] {
        entries.push(acl(
            p,
            ResourceType::Group,
            PatternType::Literal,
            "shared",
            Operation::Read,
            Permission::Allow,
        ));
        entries.push(acl(
            p,
            ResourceType::Topic,
            PatternType::Literal,
            "vis-a",
            Operation::Describe,
            Permission::Allow,
        ));
    }
    admin.create_acls(entries).await.unwrap();
    let alice = user(&admin, &addr, "alice").await;
    let mallory = user(&admin, &addr, "mallory").await;
    let join = |member_id: Option<String>| JoinGroupRequest {
        group: "shared".into(),
        member_id,
        client: "acl-test".into(),
        topics: vec![topic("vis-a")],
        session_timeout_ms: 10_000,
        strategy: AssignmentStrategy::Sticky,
    };
    let issued = alice.call(&join(None)).await.unwrap().0.member_id;
    let r = mallory.call(&join(Some(issued.clone()))).await.map(|_| ());
    assert_eq!(code(&r), Some(ErrorCode::NotAuthorized), "{r:?}");
    let joined = alice.call(&join(Some(issued.clone()))).await.unwrap().0;
    assert_eq!(joined.member_id, issued);
    assert_eq!(joined.assignment.len(), 2);
    let heartbeat = rill_protocol::messages::HeartbeatRequest {
        group: "shared".into(),
        member_id: issued.clone(),
        generation: joined.generation,
    };
    let r = mallory.call(&heartbeat).await.map(|_| ());
    assert_eq!(code(&r), Some(ErrorCode::NotAuthorized), "{r:?}");
    alice.call(&heartbeat).await.unwrap();
}

#[test]
fn rill_acl_adds_lists_and_removes_entries() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("data"), &[]);
    let addr = broker.addr().to_string();
    let env = [("RILL_PASSWORD", "admin-secret")];
    let rill = |args: &[&str]| {
        let mut all = vec!["--user", "admin"];
        all.extend_from_slice(args);
        let out = rill_with_env(Some(&addr), &all, "", &env);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let add = [
        "acl",
        "add",
        "--principal",
        "billing",
        "--operation",
        "read,describe",
        "--topic",
        "orders.",
        "--prefix",
    ];
    let (ok, out, err) = rill(&add);
    assert!(ok, "{err}");
    assert!(out.contains("added 2 entries"), "{out}");
    let (ok, out, _) = rill(&add);
    assert!(ok && out.contains("added 0 entries"), "{out}");
    let (ok, out, err) = rill(&[
        "acl",
        "add",
        "--deny",
        "--principal",
        "*",
        "--operation",
        "delete",
        "--group",
        "*",
    ]);
    assert!(ok && out.contains("added 1 entries"), "{out} {err}");

    let (ok, out, err) = rill(&["--json", "acl", "list", "--principal", "billing"]);
    assert!(ok, "{err}");
    let listed: Vec<Acl> = serde_json::from_str(out.trim()).unwrap();
    let ops: Vec<Operation> = listed.iter().map(|a| a.operation).collect();
    assert_eq!(ops, [Operation::Read, Operation::Describe]);
    assert!(
        listed
            .iter()
            .all(|a| a.pattern == PatternType::Prefix && a.name == "orders.")
    );
    let (ok, out, _) = rill(&["acl", "list", "--group", "*"]);
    assert!(
        ok && out.contains("deny") && out.contains("delete"),
        "{out}"
    );

    let (ok, out, _) = rill(&[
        "acl",
        "remove",
        "--principal",
        "billing",
        "--operation",
        "read",
        "--topic",
        "orders.",
        "--prefix",
    ]);
    assert!(ok && out.contains("removed 1 entries"), "{out}");
    let (_, out, _) = rill(&["--json", "acl", "list", "--principal", "billing"]);
    let listed: Vec<Acl> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed.len(), 1);

    // Clear errors for what cannot be an entry.
    let (ok, _, err) = rill(&[
        "acl",
        "add",
        "--principal",
        "x",
        "--operation",
        "reed",
        "--topic",
        "t",
    ]);
    assert!(!ok && err.contains("unknown operation"), "{err}");
    let (ok, _, err) = rill(&["acl", "add", "--principal", "x", "--operation", "read"]);
    assert!(!ok && err.contains("--topic"), "{err}");
}

/// In a cluster, users and ACLs go through the metadata log: made on one node, they hold on
/// every node, and on a node that restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_acls_made_on_one_node_hold_on_every_node_of_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = rill_e2e::Cluster::start_with_env(
        dir.path(),
        3,
        &["--auth", "--superuser", "admin"],
        &[("RILL_SUPERUSER_PASSWORD", "admin-secret")],
    );
    let addr = |c: &mut rill_e2e::Cluster, id: u64| c.node(id).addr().to_string();
    // The superuser exists once the metadata group committed its bootstrap.
    let first = addr(&mut cluster, 1);
    let mut tries = 0;
    let su = loop {
        match Client::connect_with(&first, as_user("admin", "admin-secret")).await {
            Ok(c) => break c,
            Err(e) => {
                tries += 1;
                assert!(tries < 30, "no superuser after {tries} attempts: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let admin = Admin::new(su);
    admin.create_user("svc", "pw").await.unwrap();
    let entries = vec![
        acl(
            "svc",
            ResourceType::Cluster,
            PatternType::Literal,
            CLUSTER,
            Operation::Create,
            Permission::Allow,
        ),
        acl(
            "svc",
            ResourceType::Topic,
            PatternType::Prefix,
            "svc-",
            Operation::All,
            Permission::Allow,
        ),
    ];
    assert_eq!(admin.create_acls(entries.clone()).await.unwrap(), 2);

    // Another node knows the user and applies the ACLs.
    let third = addr(&mut cluster, 3);
    let svc = Client::connect_with(&third, as_user("svc", "pw"))
        .await
        .unwrap();
    Admin::new(svc.clone())
        .create_topic("svc-events", 1, TopicConfig::default())
        .await
        .unwrap();
    let e = Admin::new(svc.clone())
        .delete_topic("svc-events2")
        .await
        .unwrap_err();
    assert!(
        !matches!(
            e,
            Error::Broker {
                code: ErrorCode::NotAuthorized,
                ..
            }
        ),
        "allowed by prefix: {e}"
    );
    let r = Admin::new(svc.clone())
        .list_acls(Default::default())
        .await
        .map(|_| ());
    assert_eq!(code(&r), Some(ErrorCode::NotAuthorized), "{r:?}");

    // A node that restarts rebuilds them from its metadata log.
    cluster.node(2).kill9();
    cluster.node(2).restart();
    let second = addr(&mut cluster, 2);
    let mut tries = 0;
    let acls = loop {
        let r = async {
            let c = Client::connect_with(&second, as_user("admin", "admin-secret")).await?;
            Admin::new(c).list_acls(Default::default()).await
        }
        .await;
        match r {
            Ok(acls) if acls.len() == 2 => break acls,
            other => {
                tries += 1;
                assert!(tries < 100, "node 2 did not catch up: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut expected = entries;
    expected.sort();
    assert_eq!(acls, expected);
    Client::connect_with(&second, as_user("svc", "pw"))
        .await
        .unwrap();
}
