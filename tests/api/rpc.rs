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
