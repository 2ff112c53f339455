//! The write pipeline, in-process, against each engine: the file engine on
//! a temp directory and the etcd engine on a real 3-member etcd cluster
//! started by the test. The same script runs on both, so both engines give
//! the same answers: revisions, compare-and-set, identical writes, rollback,
//! the schema, the writer's uid in the history, and concurrent writers.
use super::harness::{limits, site, try_open, DOC};
use crate::storage::admit::Limits;
use crate::storage::{Storage, WriteError};
use std::sync::Arc;

#[path = "../../tests/common/etcd.rs"]
mod etcd_cluster;

fn json(storage: &Storage) -> String {
    String::from_utf8(storage.current().document.json().to_vec()).unwrap()
}

fn schema_limits(dir: &std::path::Path) -> Limits {
    let path = dir.join("schema.json");
    std::fs::write(&path, r#"{"properties": {"a": {"type": "integer"}}}"#).unwrap();
    Limits {
        schema: Some(Arc::new(
            argsbroker::schema::Schema::load(&path).expect("a schema"),
        )),
        ..limits()
    }
}

/// The script: starts from DOC at `first`, whatever the engine.
async fn pipeline(storage: &Storage) {
    let first = storage.current().revision;
    assert_eq!(
        json(storage),
        r#"{"a":1,"list":[10,20],"nested":{"k":"v"}}"#
    );

    let next = storage
        .patch(r#"{"a": 2}"#, Some(first), Some(1000))
        .await
        .unwrap();
    assert!(next.revision > first);
    match storage.patch(r#"{"a": 3}"#, Some(first), None).await {
        Err(WriteError::Conflict { expected, current }) => {
            assert_eq!((expected, current), (first, next.revision));
        }
        other => panic!("expected a conflict, got {:?}", other.map(|s| s.revision)),
    }
    // The same content again is no new revision.
    let same = storage.patch(r#"{"a": 2}"#, None, None).await.unwrap();
    assert_eq!(same.revision, next.revision);
    // Refused by the schema: nothing changes.
    let refused = storage
        .patch(r#"{"a": "x"}"#, None, None)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .starts_with("the document does not satisfy the schema"),
        "{refused}"
    );
    assert_eq!(storage.current().revision, next.revision);
    // A patch whose top level is not an object.
    assert!(matches!(
        storage.set("[1]", None, None).await,
        Err(WriteError::Invalid(_))
    ));

    // Rollback: a new revision with the old content.
    let back = storage.rollback(first, None, Some(0)).await.unwrap();
    assert!(back.revision > next.revision);
    assert_eq!(
        json(storage),
        r#"{"a":1,"list":[10,20],"nested":{"k":"v"}}"#
    );

    // Sixteen writers at once, each its own key: every one is in the result.
    let writers = (0..16).map(|i| {
        let storage = storage.clone();
        tokio::spawn(async move {
            storage
                .patch(&format!(r#"{{"w{i}": {i}}}"#), None, Some(2000 + i))
                .await
                .map(|s| s.revision)
        })
    });
    let mut revisions = Vec::new();
    for w in writers {
        revisions.push(w.await.unwrap().unwrap());
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 16, "one revision each: {revisions:?}");
    let doc: serde_json::Value = serde_json::from_str(&json(storage)).unwrap();
    for i in 0..16 {
        assert_eq!(doc[format!("w{i}")], i, "{doc}");
    }

    // The history names each writer and how it wrote.
    let history = storage.revisions().await.unwrap();
    let by_rev = |r: u64| history.iter().find(|h| h.revision == r).unwrap();
    assert_eq!(
        (
            by_rev(next.revision).writer_uid,
            by_rev(next.revision).source.as_str()
        ),
        (Some(1000), "patch")
    );
    assert_eq!(
        (
            by_rev(back.revision).writer_uid,
            by_rev(back.revision).source.as_str()
        ),
        (Some(0), "rollback")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_on_the_file_engine() {
    let dir = site(DOC);
    let store = try_open(dir.path(), schema_limits(dir.path())).expect("open");
    pipeline(&store.storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_on_the_etcd_engine() {
    use crate::storage::etcd::{Config, EtcdEngine};
    use crate::storage::file::ArgsFile;
    use crate::storage::Engine;
    let cluster = etcd_cluster::Cluster::start(3);
    let dir = site(DOC);
    let limits = Arc::new(schema_limits(dir.path()));
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let seed = ArgsFile::read(&dir.path().join("args.json"), limits.max_args_bytes, None)
        .expect("the seed");
    let (engine, head) = EtcdEngine::open(Config {
        endpoints: cluster.endpoints(),
        key: "/argsbroker/pipeline".to_owned(),
        seed: Some(seed),
        state_dir: dir.path().join("state"),
        startup_timeout: std::time::Duration::from_secs(30),
        timeout: std::time::Duration::from_secs(5),
        max_request_bytes: 1536 * 1024,
        limits: limits.clone(),
        tls: None,
        user: None,
    })
    .await
    .expect("open the etcd engine");
    let storage = Storage::new(head, limits, Engine::Etcd(engine));
    pipeline(&storage).await;
}
