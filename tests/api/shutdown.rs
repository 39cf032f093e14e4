//! Graceful shutdown: in-flight requests finish, new ones are refused, and the
//! drain is bounded.

use std::time::{Duration, Instant};

use crate::harness::{TestApp, test_routes};

#[tokio::test]
async fn in_flight_requests_finish_before_shutdown() {
    let mut app =
        TestApp::builder().routes(test_routes()).config(|c| c.shutdown_timeout = Duration::from_secs(5)).spawn().await;
    let client = app.client.clone();
    let url = app.url("/test/slow?ms=800");
    let slow = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let server = app.begin_shutdown();
    // The in-flight request completes normally.
    let res = slow.await.unwrap().expect("in-flight request completed");
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");
    server.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    // New connections are refused after shutdown.
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err(), "listener still open after shutdown");
}

#[tokio::test]
async fn drain_is_bounded() {
    let mut app = TestApp::builder()
        .routes(test_routes())
        .config(|c| {
            c.shutdown_timeout = Duration::from_millis(300);
            c.request_timeout = Duration::from_secs(60);
        })
        .spawn()
        .await;
    let client = app.client.clone();
    let url = app.url("/test/slow?ms=20000");
    let _hung = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    app.shutdown().await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "shutdown took {took:?}");
}
