//! The CouchDB client (`caldera::couch`) against the real server: documents,
//! `_bulk_docs`, `_all_docs`, `_local` documents, attachments, database
//! creation, credentials, and error classification.

use std::time::Duration;

use caldera::config::{Config, CouchConfig};
use caldera::couch::{Client, ErrorKind};
use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::support::couch::server_url;

fn couch_config(url: &str) -> CouchConfig {
    let text = format!("[couchdb]\nurl = {url:?}\nrequest_timeout_ms = 5000\n");
    Config::from_toml(&text, &|_| None)
        .expect("a valid config")
        .couchdb
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_bulk_all_docs_local_docs_and_attachments() {
    let env = TestEnv::new().await;
    let client = Client::new(&couch_config(server_url())).expect("a client");
    let db = client.db(&format!("{}_client", env.names.prefix));
    assert!(db.info().await.unwrap().is_none(), "not created yet");
    assert!(db.create().await.unwrap(), "created");
    assert!(
        !db.create().await.unwrap(),
        "a second create reports it existed"
    );

    let rev = db.put(&json!({"_id": "a/b c", "v": 1})).await.unwrap();
    let doc = db
        .get("a/b c")
        .await
        .unwrap()
        .expect("stored under an id with / and space");
    assert_eq!(doc["v"], 1);
    let stale = db.put(&json!({"_id": "a/b c", "v": 2})).await.unwrap_err();
    assert!(stale.is(ErrorKind::Conflict), "{stale}");
    let rev2 = db
        .put(&json!({"_id": "a/b c", "_rev": rev, "v": 2}))
        .await
        .unwrap();
    assert!(db.get("missing").await.unwrap().is_none());

    let results = db
        .bulk_docs(&[
            json!({"_id": "x", "n": 1}),
            json!({"_id": "a/b c", "_rev": "1-bogus", "n": 1}),
        ])
        .await
        .unwrap();
    assert!(results[0].rev.is_some() && results[0].error.is_none());
    assert_eq!(
        results[1].error.as_deref(),
        Some("conflict"),
        "per-document errors are reported"
    );

    db.delete("x", results[0].rev.as_deref().unwrap())
        .await
        .unwrap();
    let rows = db
        .all_docs(&["a/b c".into(), "x".into(), "never".into()], true)
        .await
        .unwrap();
    assert_eq!(rows[0].value.as_ref().unwrap().rev, rev2);
    assert_eq!(rows[0].doc.as_ref().unwrap()["v"], 2);
    assert!(
        rows[1].value.as_ref().unwrap().deleted,
        "a deletion shows its tombstone"
    );
    assert!(
        rows[2].value.is_none() && rows[2].error.is_some(),
        "a missing key is an error row"
    );

    // _local documents: GET-then-PUT with the stored _rev works on both servers.
    assert!(db.get_local("cp").await.unwrap().is_none());
    db.put_local("cp", &json!({"since": 3})).await.unwrap();
    db.put_local("cp", &json!({"since": "7-g1AAA"}))
        .await
        .unwrap();
    assert_eq!(
        db.get_local("cp").await.unwrap().unwrap()["since"],
        "7-g1AAA"
    );

    let bytes = bytes::Bytes::from_static(b"#!/bin/sh\necho hi\n");
    let with_file = db
        .put_attachment(
            "pkg",
            None,
            "install.sh",
            "text/x-shellscript",
            bytes.clone(),
        )
        .await
        .unwrap();
    let (content_type, body) = db
        .get_attachment("pkg", "install.sh")
        .await
        .unwrap()
        .expect("stored");
    assert!(
        content_type.starts_with("text/x-shellscript"),
        "{content_type}"
    );
    assert_eq!(body, bytes);
    assert!(db.get_attachment("pkg", "nope").await.unwrap().is_none());
    db.put_attachment(
        "pkg",
        Some(&with_file),
        "b.bin",
        "application/octet-stream",
        bytes::Bytes::from_static(&[0, 255]),
    )
    .await
    .unwrap();

    let page = db.changes_page(&Value::from(0), 100).await.unwrap();
    let ids: Vec<_> = page.rows.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&"a/b c") && ids.contains(&"pkg"), "{ids:?}");
    assert!(page.rows.iter().any(|r| r.id == "x" && r.deleted));
    assert!(db.delete_db().await.unwrap());
    assert!(db.info().await.unwrap().is_none(), "gone after delete");
    // pouchdb-server answers 200 to deleting a missing database, CouchDB 404:
    // both must be fine for the caller.
    db.delete_db()
        .await
        .expect("deleting a missing database is not an error");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_classified_by_what_the_caller_must_do() {
    let env = TestEnv::new().await;
    let url = reqwest::Url::parse(server_url()).unwrap();
    // Wrong credentials: unauthorized, not "transient".
    let mut wrong = url.clone();
    wrong.set_username("admin").unwrap();
    wrong.set_password(Some("wrong-password")).unwrap();
    let client = Client::new(&couch_config(wrong.as_str())).unwrap();
    let err = client
        .db(&env.names.system_config)
        .put(&json!({"_id": "z"}))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::Unauthorized), "{err}");

    // Nobody listening: transient, retried with backoff by callers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = couch_config(&format!("http://127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(500);
    let err = Client::new(&config)
        .unwrap()
        .db("any")
        .info()
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::Transient), "{err}");
    assert!(
        err.to_string().contains("GET any"),
        "the operation is named: {err}"
    );

    // A document without _id is refused before any request.
    let client = Client::new(&couch_config(server_url())).unwrap();
    let err = client
        .db(&env.names.system_config)
        .put(&json!({"v": 1}))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::Fatal), "{err}");
}

/// Credentials given as `couchdb.username`/`couchdb.password` (the URL
/// without them) authenticate like credentials in the URL.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_the_config_keys_authenticate() {
    let env = TestEnv::new().await;
    let url = reqwest::Url::parse(server_url()).unwrap();
    if url.username().is_empty() {
        // A server without an admin (COUCHDB_URL without credentials).
        return;
    }
    let user = percent_encoding::percent_decode_str(url.username())
        .decode_utf8_lossy()
        .into_owned();
    let password = percent_encoding::percent_decode_str(url.password().unwrap_or(""))
        .decode_utf8_lossy()
        .into_owned();
    let mut bare = url.clone();
    bare.set_username("").unwrap();
    bare.set_password(None).unwrap();
    let text = format!(
        "[couchdb]\nurl = {:?}\nusername = {user:?}\npassword = {password:?}\n",
        bare.as_str()
    );
    let config = Config::from_toml(&text, &|_| None).expect("a valid config");
    let client = Client::new(&config.couchdb).unwrap();
    let db = client.db(&env.names.system_config);
    db.put(&json!({"_id": "with_config_credentials"}))
        .await
        .expect("authenticated by couchdb.username/password");
    // Creating a database needs the admin: the credentials were sent.
    let created = client.db(&format!(
        "{}_created_by_config_credentials",
        env.names.prefix
    ));
    assert!(
        created
            .create()
            .await
            .expect("an admin may create a database")
    );
}

/// A server that accepts the connection and then says nothing: the request
/// fails after `couchdb.request_timeout_ms` as transient (retried), and
/// never hangs.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_times_out_as_transient() {
    let proxy = crate::support::proxy::FaultProxy::in_front_of(server_url()).await;
    proxy.stall();
    let text = format!(
        "[couchdb]\nurl = {:?}\nrequest_timeout_ms = 400\n",
        proxy.url_for(server_url())
    );
    let config = Config::from_toml(&text, &|_| None).expect("a valid config");
    let client = Client::new(&config.couchdb).unwrap();
    let started = std::time::Instant::now();
    let err = client.db("any").info().await.unwrap_err();
    let took = started.elapsed();
    assert!(err.is(ErrorKind::Transient), "{err}");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "timed out after {took:?} (request_timeout_ms = 400)"
    );
}
