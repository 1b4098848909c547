//! The node client's failure behaviour: reads retry transient failures with backoff, give up
//! on the rest at once, and every error names the node call that failed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use breakglass::chain::rpc::{NodeClient, RpcError};

/// A stand-in node that fails the first `failures` calls with `status`, then answers /v2/info.
async fn flaky_node(failures: usize, status: u16) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().default_service(web::to(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < failures {
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("busy")
                } else {
                    HttpResponse::Ok().json(serde_json::json!({ "stacks_tip_height": 7, "stacks_tip": "ab", "network_id": 2147483648u32 }))
                }
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}"), calls)
}

#[actix_web::test]
async fn reads_retry_server_errors_then_succeed() {
    let (url, calls) = flaky_node(2, 503).await;
    let info = NodeClient::new(&url, Duration::from_secs(2), 3)
        .info()
        .await
        .unwrap();
    assert_eq!(info.stacks_tip_height, 7);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[actix_web::test]
async fn reads_give_up_after_the_retries_and_say_which_call() {
    let (url, calls) = flaky_node(10, 500).await;
    let err = NodeClient::new(&url, Duration::from_secs(2), 2)
        .info()
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Status { status: 500, .. }));
    assert!(err.to_string().contains("GET /v2/info"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[actix_web::test]
async fn client_errors_are_not_retried() {
    let (url, calls) = flaky_node(10, 404).await;
    let err = NodeClient::new(&url, Duration::from_secs(2), 3)
        .info()
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Status { status: 404, .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn an_unreachable_node_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = NodeClient::new(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_millis(500),
        1,
    );
    let err = client.info().await.unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }));
    assert!(
        err.to_string()
            .contains("GET /v2/info: cannot reach the node"),
        "{err}"
    );
    let broadcast = client.broadcast(&[0u8; 4]).await.unwrap_err();
    assert!(
        broadcast.to_string().contains("POST /v2/transactions"),
        "{broadcast}"
    );
}

/// A read at a block asks for it (`?tip=`, its index block hash in hex), and a node that has
/// not got it yet (404) is asked again while it catches up; given up on, the error says so.
#[actix_web::test]
async fn a_read_at_a_block_names_it_and_waits_for_a_node_behind_it() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // how many more asks the node answers as one behind the block
    let behind = Arc::new(AtomicUsize::new(2));
    let (seen, lagging) = (asked.clone(), behind.clone());
    let server = HttpServer::new(move || {
        let (seen, lagging) = (seen.clone(), lagging.clone());
        App::new().default_service(web::to(move |req: actix_web::HttpRequest| {
            seen.lock().unwrap().push(req.query_string().to_string());
            let behind = lagging
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            async move {
                if behind {
                    HttpResponse::NotFound().body("Chain tip not found")
                } else {
                    // (a Clarity `true`)
                    HttpResponse::Ok().json(serde_json::json!({ "okay": true, "result": "0x03" }))
                }
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    let sender: breakglass::stacks::Address =
        "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".parse().unwrap();
    let contract = format!("{sender}.access-control");
    let tip = [0xabu8; 32];
    let at_tip = format!("tip={}", "ab".repeat(32));
    let client = NodeClient::new(&url, Duration::from_secs(2), 3);

    let v = client
        .call_read_at(&contract, "is-responder", &[], &sender, Some(&tip))
        .await
        .unwrap();
    assert_eq!(v, breakglass::stacks::Value::Bool(true));
    assert_eq!(
        *asked.lock().unwrap(),
        vec![at_tip.clone(); 3],
        "asked at the block, and again while the node was behind it"
    );

    // given up on: the error names the block
    asked.lock().unwrap().clear();
    behind.store(10, Ordering::SeqCst);
    let err = client
        .call_read_at(&contract, "is-responder", &[], &sender, Some(&tip))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NoSuchTip { .. }), "{err:?}");
    assert!(err.to_string().contains(&"ab".repeat(32)), "{err}");
    assert_eq!(asked.lock().unwrap().len(), 4);

    // a read at the node's own tip names none, and its 404 is the node's answer, not retried
    asked.lock().unwrap().clear();
    let err = client
        .call_read(&contract, "is-responder", &[], &sender)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Status { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(*asked.lock().unwrap(), vec![String::new()]);
}
