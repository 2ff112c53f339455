//! The store on its own: revisions, compare-and-set, identical writes,
//! rollback, reloads against the broker's own writes and outside edits,
//! lineage, and what a reopened state serves.
use super::harness::Store;
use super::harness::{limits, open, site, DOC, DOC_COMPACT};
use crate::storage::admit::Limits;
use crate::storage::admit::Source;
use crate::storage::file::OpenError;
use crate::storage::WriteError;

fn json(store: &Store) -> String {
    String::from_utf8(store.current().document.json().to_vec()).unwrap()
}

fn sources(store: &Store) -> Vec<(u64, String)> {
    store
        .revisions()
        .into_iter()
        .map(|r| (r.revision, r.source))
        .collect()
}

fn write_outside(dir: &std::path::Path, text: &str) {
    // As deploy tools do: a new file renamed over the old one.
    let tmp = dir.join("deploy.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("args.json")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_and_identical_writes() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    assert_eq!(
        (store.current().revision, json(&store)),
        (1, DOC_COMPACT.into())
    );

    let next = store.patch(r#"{"a": 2}"#, Some(1), Some(0)).await.unwrap();
    assert_eq!(next.revision, 2);
    match store.patch(r#"{"a": 3}"#, Some(1), None).await {
        Err(WriteError::Conflict {
            expected: 1,
            current: 2,
        }) => {}
        other => panic!("expected a conflict, got {:?}", other.map(|s| s.revision)),
    }
    // The same content again is not a new revision.
    let same = store.patch(r#"{"a": 2}"#, None, None).await.unwrap();
    assert_eq!(same.revision, 2);
    let same = store.set(&json(&store), None, None).await.unwrap();
    assert_eq!(same.revision, 2);
    assert_eq!(store.revisions().len(), 2);
    let file = std::fs::read_to_string(dir.path().join("args.json")).unwrap();
    assert_eq!(
        file,
        "{\n  \"a\": 2,\n  \"list\": [\n    10,\n    20\n  ],\n  \"nested\": {\n    \"k\": \"v\"\n  }\n}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_makes_a_new_revision_with_old_content() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    store.set(r#"{"v": 2}"#, None, None).await.unwrap();
    let back = store.rollback(1, Some(2), Some(0)).await.unwrap();
    assert_eq!((back.revision, json(&store)), (3, DOC_COMPACT.into()));
    assert_eq!(
        sources(&store),
        [
            (1, "file".into()),
            (2, "set".into()),
            (3, "rollback".into())
        ]
    );
    match store.rollback(9, None, None).await {
        Err(err @ WriteError::NotRetained { .. }) => assert_eq!(
            err.to_string(),
            "revision 9 is not retained (retained: 1 to 3)"
        ),
        other => panic!("expected NotRetained, got {:?}", other.map(|s| s.revision)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_within_its_bounds() {
    let dir = site(DOC);
    let store = open(
        dir.path(),
        Limits {
            history: 3,
            ..limits()
        },
    );
    for n in 2..=6 {
        store
            .patch(&format!(r#"{{"n": {n}}}"#), None, None)
            .await
            .unwrap();
    }
    let kept: Vec<u64> = store.revisions().iter().map(|r| r.revision).collect();
    assert_eq!(kept, [4, 5, 6]);
    assert_eq!(store.revisions_after(4).unwrap().len(), 2);
    assert!(store.revisions_after(1).is_none(), "2 and 3 are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_makes_a_revision_of_the_brokers_own_write() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    store.patch(r#"{"mine": 1}"#, None, None).await.unwrap();
    assert!(store.reload().await.unwrap().is_none());
    assert_eq!(store.current().revision, 2);
    assert_eq!(sources(&store), [(1, "file".into()), (2, "patch".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_makes_a_revision_of_an_outside_edit_once() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    write_outside(dir.path(), r#"{"deployed": 1}"#);
    let loaded = store.reload().await.unwrap().expect("a new revision");
    assert_eq!(
        (loaded.revision, json(&store)),
        (2, r#"{"deployed":1}"#.into())
    );
    assert!(store.reload().await.unwrap().is_none(), "only once");
    assert_eq!(sources(&store), [(1, "file".into()), (2, "file".into())]);
}

/// A write that finds an outside edit not loaded yet loads it first, then
/// applies on top of it: neither is lost, and a compare-and-set against the
/// revision before the edit is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_an_outside_edit_keeps_both() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    write_outside(dir.path(), r#"{"deployed": 1}"#);
    match store.patch(r#"{"mine": 1}"#, Some(1), None).await {
        Err(WriteError::Conflict {
            expected: 1,
            current: 2,
        }) => {}
        other => panic!("expected a conflict, got {:?}", other.map(|s| s.revision)),
    }
    let written = store.patch(r#"{"mine": 1}"#, None, None).await.unwrap();
    assert_eq!(
        (written.revision, json(&store)),
        (3, r#"{"deployed":1,"mine":1}"#.into())
    );
    assert_eq!(
        sources(&store),
        [(1, "file".into()), (2, "file".into()), (3, "patch".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_outside_edit_is_refused_and_changes_nothing() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    write_outside(dir.path(), "{\"a\": ");
    match store.reload().await {
        Err(err @ OpenError::Invalid { .. }) => assert!(
            err.to_string()
                .ends_with("invalid JSON at line 1 column 6: EOF while parsing a value"),
            "{err}"
        ),
        other => panic!(
            "expected Invalid, got {:?}",
            other.map(|s| s.map(|s| s.revision))
        ),
    }
    let refused = store.patch(r#"{"b": 1}"#, None, None).await;
    assert!(matches!(refused, Err(WriteError::OutsideEdit(..))));
    assert_eq!(
        (store.current().revision, json(&store)),
        (1, DOC_COMPACT.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_state_keeps_its_lineage_and_revisions() {
    let dir = site(DOC);
    let (lineage, revision) = {
        let store = open(dir.path(), limits());
        store.patch(r#"{"a": 2}"#, None, None).await.unwrap();
        (
            store.current().reply.lineage.clone(),
            store.current().revision,
        )
    };
    assert_eq!(lineage.len(), 32);
    let store = open(dir.path(), limits());
    assert_eq!(
        (&store.current().reply.lineage, store.current().revision),
        (&lineage, revision)
    );
    drop(store);

    // Changed while the broker was down: the next revision, same lineage.
    write_outside(dir.path(), r#"{"offline": true}"#);
    let store = open(dir.path(), limits());
    assert_eq!(
        (&store.current().reply.lineage, store.current().revision),
        (&lineage, revision + 1)
    );
    assert_eq!(
        store.revisions().last().unwrap().source,
        Source::File.as_str()
    );
    drop(store);

    // A deleted state starts a new lineage at revision 1.
    std::fs::remove_dir_all(dir.path().join("args.json.state")).unwrap();
    let store = open(dir.path(), limits());
    assert_eq!(store.current().revision, 1);
    assert_ne!(store.current().reply.lineage, lineage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_limit_or_read_only_are_refused() {
    let dir = site(DOC);
    let store = open(
        dir.path(),
        Limits {
            max_args_bytes: 64,
            ..limits()
        },
    );
    let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(100));
    assert_eq!(
        store.set(&big, None, None).await.unwrap_err().to_string(),
        "the document is 109 bytes, over the limit of 64 bytes"
    );
    let dir = site(DOC);
    let store = open(
        dir.path(),
        Limits {
            read_only: true,
            ..limits()
        },
    );
    assert!(matches!(
        store.patch("{}", None, None).await,
        Err(WriteError::ReadOnly(_))
    ));
}

/// kill -9 between a commit (the journal's fsync) and the rename of the new
/// args file: the write may have been acknowledged, so the next start
/// serves it and rewrites the args file from the journal, recording nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_args_file_was_not_renamed_yet_is_finished_at_the_next_start() {
    let dir = site(DOC);
    let args = dir.path().join("args.json");
    let (committed, before) = {
        let store = open(dir.path(), limits());
        let before = std::fs::read(&args).unwrap();
        let written = store.patch(r#"{"a": 2}"#, None, None).await.unwrap();
        (json(&store), (before, written.revision))
    };
    let (old_text, revision) = before;
    std::fs::write(&args, &old_text).unwrap();
    let store = open(dir.path(), limits());
    assert_eq!(
        (store.current().revision, json(&store)),
        (revision, committed)
    );
    assert_eq!(store.revisions().len(), 2);
    assert_eq!(
        std::fs::read_to_string(&args).unwrap(),
        "{\n  \"a\": 2,\n  \"list\": [\n    10,\n    20\n  ],\n  \"nested\": {\n    \"k\": \"v\"\n  }\n}\n"
    );
}

/// An args file changed by someone while the broker was down (after its
/// last commit, in the same millisecond included) is theirs: it becomes the
/// next revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_while_the_broker_was_down_becomes_the_next_revision() {
    let dir = site(DOC);
    drop(open(dir.path(), limits()));
    write_outside(dir.path(), r#"{"operator": 1}"#);
    let store = open(dir.path(), limits());
    assert_eq!(
        (store.current().revision, json(&store)),
        (2, r#"{"operator":1}"#.into())
    );
    assert_eq!(sources(&store), [(1, "file".into()), (2, "file".into())]);
}

/// kill -9 in the middle of an append leaves half a record, never
/// acknowledged: the next start cuts it off and serves the revision before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_journal_record_is_cut_off() {
    let dir = site(DOC);
    let journal = dir.path().join("args.json.state/journal");
    let committed = {
        let store = open(dir.path(), limits());
        store.patch(r#"{"a": 2}"#, None, None).await.unwrap();
        json(&store)
    };
    let whole = std::fs::read(&journal).unwrap();
    let mut torn = whole.clone();
    // A third record, cut short: its header says more than follows.
    torn.extend_from_slice(&500u32.to_le_bytes());
    torn.extend_from_slice(&[0, 0, 0, 0]);
    torn.extend_from_slice(br#"{"revision":3,"#);
    std::fs::write(&journal, torn).unwrap();
    let store = open(dir.path(), limits());
    assert_eq!((store.current().revision, json(&store)), (2, committed));
    assert_eq!(std::fs::read(&journal).unwrap(), whole);
    assert_eq!(
        store
            .patch(r#"{"a": 3}"#, None, None)
            .await
            .unwrap()
            .revision,
        3
    );
}

/// A state written by a broker before the journal (one file per revision
/// in `history/`) is moved into the journal: same revisions, same lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_brokers_history_is_moved_into_the_journal() {
    let dir = site(DOC);
    let state = dir.path().join("args.json.state");
    let lineage = {
        let store = open(dir.path(), limits());
        store.patch(r#"{"a": 2}"#, None, None).await.unwrap();
        store.current().reply.lineage.clone()
    };
    // What an older broker kept: the same records, one file each.
    let history = state.join("history");
    std::fs::create_dir(&history).unwrap();
    let store = open(dir.path(), limits());
    for (i, revision) in store.revisions().iter().enumerate() {
        let record = store.file.retained(revision.revision).unwrap();
        let text = format!(
            r#"{{"revision":{},"unix_millis":{},"sha256":"{}","writer_uid":null,"source":"{}","document":{}}}"#,
            revision.revision,
            revision.unix_millis,
            revision.sha256,
            revision.source,
            record.json_str()
        );
        std::fs::write(history.join(format!("{:020}.json", i + 1)), text).unwrap();
    }
    drop(store);
    std::fs::remove_file(state.join("journal")).unwrap();
    let store = open(dir.path(), limits());
    assert_eq!(
        (store.current().revision, &store.current().reply.lineage),
        (2, &lineage)
    );
    assert_eq!(sources(&store), [(1, "file".into()), (2, "patch".into())]);
    assert!(
        !history.exists(),
        "the old history is gone once in the journal"
    );
}

/// An outside edit, then another one back to the broker's own last write:
/// both are someone else's changes, and both become revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_edit_back_to_the_brokers_own_write_is_a_revision() {
    let dir = site(DOC);
    let store = open(dir.path(), limits());
    store.patch(r#"{"a": 2}"#, None, None).await.unwrap();
    let own = std::fs::read_to_string(dir.path().join("args.json")).unwrap();
    write_outside(dir.path(), r#"{"deployed": 1}"#);
    assert_eq!(store.reload().await.unwrap().unwrap().revision, 3);
    write_outside(dir.path(), &own);
    let reverted = store.reload().await.unwrap().expect("a new revision");
    assert_eq!(
        (reverted.revision, json(&store)),
        (4, r#"{"a":2,"list":[10,20],"nested":{"k":"v"}}"#.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_edit_that_breaks_the_schema_is_never_a_revision() {
    let dir = site(DOC);
    let path = dir.path().join("args.schema.json");
    let text = br#"{"properties": {"a": {"type": "integer"}}}"#;
    let schema = argsbroker::schema::Schema::from_slice(&path, text).unwrap();
    let store = open(
        dir.path(),
        Limits {
            schema: Some(std::sync::Arc::new(schema)),
            ..limits()
        },
    );
    let unsatisfied = format!(
        "does not satisfy the schema {}: /a: \"x\" is not of type \"integer\"",
        path.display()
    );
    // A write, then an outside edit found by a reload or by the next write:
    // each refused, and the revision stays.
    let refused = store.patch(r#"{"a": "x"}"#, None, None).await.unwrap_err();
    assert!(matches!(refused, WriteError::Schema(_)));
    assert_eq!(refused.to_string(), format!("the document {unsatisfied}"));
    write_outside(dir.path(), r#"{"a": "x"}"#);
    let reloaded = store.reload().await.map(|s| s.map(|s| s.revision));
    match reloaded {
        Err(err @ OpenError::Schema { .. }) => assert_eq!(
            err.to_string(),
            format!(
                "the args file {} {unsatisfied}",
                dir.path().join("args.json").display()
            )
        ),
        other => panic!("expected Schema, got {other:?}"),
    }
    let refused = store.patch(r#"{"b": 1}"#, None, None).await;
    assert!(matches!(refused, Err(WriteError::OutsideEdit(..))));
    assert_eq!(
        (store.current().revision, json(&store)),
        (1, DOC_COMPACT.into())
    );
    assert_eq!(sources(&store), [(1, "file".into())]);
}
