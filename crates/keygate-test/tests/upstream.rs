//! Self-tests of the test upstream: routes, recording, streaming, concurrency
//! and shutdown on drop.

use std::time::{Duration, Instant};

use keygate_test::reqwest::header::{HeaderMap, HeaderValue};
use keygate_test::{http_client, Upstream};

#[tokio::test]
async fn echo_records_method_uri_headers_and_body() {
    let up = Upstream::start().await;
    let resp = http_client()
        .post(format!("{}/a/b?x=1&y=two", up.url()))
        .header("X-Test", "yes")
        .body("hello")
        .send()
        .await
        .expect("send echo request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "test");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let json: serde_json::Value = resp.json().await.expect("echo body is JSON");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["uri"], "/a/b?x=1&y=two");
    assert_eq!(json["headers"]["x-test"], "yes");
    assert_eq!(json["body"], "hello");

    assert_eq!(up.request_count(), 1);
    let rec = &up.requests()[0];
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.uri, "/a/b?x=1&y=two");
    assert_eq!(rec.header("x-test"), Some("yes"));
    assert_eq!(rec.header("X-TEST"), Some("yes"));
    assert!(
        rec.headers.iter().any(|(n, _)| n == "x-test"),
        "names are lowercase"
    );
    assert_eq!(rec.header("content-length"), Some("5"));
    assert_eq!(rec.body, b"hello");
}

#[tokio::test]
async fn repeated_headers_are_kept() {
    let up = Upstream::start().await;
    let mut headers = HeaderMap::new();
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    let json: serde_json::Value = http_client()
        .get(format!("{}/multi", up.url()))
        .headers(headers)
        .send()
        .await
        .expect("send request with repeated header")
        .json()
        .await
        .expect("echo body is JSON");
    assert_eq!(json["headers"]["x-multi"], serde_json::json!(["a", "b"]));
    let rec = up.last_request().expect("one request recorded");
    assert_eq!(rec.header_all("x-multi"), vec!["a", "b"]);
    assert_eq!(rec.header("x-multi"), Some("a"));
    assert!(rec.header_all("x-absent").is_empty());
}

#[tokio::test]
async fn status_route_answers_that_status() {
    let up = Upstream::start().await;
    let resp = http_client()
        .get(format!("{}/status/503", up.url()))
        .send()
        .await
        .expect("send /status/503");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.expect("read body"), "status 503");
    assert_eq!(up.requests()[0].uri, "/status/503");
}

#[tokio::test]
async fn echo_body_returns_body_and_content_type() {
    let up = Upstream::start().await;
    let body: Vec<u8> = (0..=255u8).collect();
    let resp = http_client()
        .put(format!("{}/echo-body", up.url()))
        .header("content-type", "application/x-test")
        .body(body.clone())
        .send()
        .await
        .expect("send /echo-body");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-test");
    assert_eq!(resp.bytes().await.expect("read body").as_ref(), &body[..]);
    assert_eq!(up.requests()[0].body, body);
}

#[tokio::test]
async fn slow_route_waits() {
    let up = Upstream::start().await;
    let started = Instant::now();
    let resp = http_client()
        .get(format!("{}/slow/200", up.url()))
        .send()
        .await
        .expect("send /slow/200");
    assert_eq!(resp.text().await.expect("read body"), "slow");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn sse_streams_events_as_they_are_produced() {
    let up = Upstream::start().await;
    let mut resp = http_client()
        .get(format!("{}/sse", up.url()))
        .send()
        .await
        .expect("send /sse");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = resp.chunk().await.expect("read sse chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("sse is UTF-8"));
        if first_event_at.is_none() && text.contains("data: 0\n\n") {
            first_event_at = Some(Instant::now());
        }
    }
    let ended_at = Instant::now();
    let first = first_event_at.expect("first event seen");
    assert!(
        ended_at - first >= Duration::from_millis(250),
        "first event arrived only {:?} before the end",
        ended_at - first
    );
    let expected: String = (0..5).map(|n| format!("data: {n}\n\n")).collect();
    assert_eq!(text, expected);
}

#[tokio::test]
async fn stream_bytes_delivers_all_bytes_chunked() {
    let up = Upstream::start().await;
    let mut resp = http_client()
        .get(format!("{}/stream-bytes/100000", up.url()))
        .send()
        .await
        .expect("send /stream-bytes/100000");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), None, "body is chunked");
    let mut total = 0;
    while let Some(chunk) = resp.chunk().await.expect("read chunk") {
        total += chunk.len();
    }
    assert_eq!(total, 100_000);
}

#[tokio::test]
async fn serves_concurrent_requests() {
    let up = Upstream::start().await;
    let client = http_client();
    let url = format!("{}/slow/300", up.url());
    let started = Instant::now();
    let (a, b) = tokio::join!(client.get(&url).send(), client.get(&url).send());
    assert_eq!(a.expect("first request").status(), 200);
    assert_eq!(b.expect("second request").status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "requests were not served concurrently: {:?}",
        started.elapsed()
    );
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn keep_alive_connection_serves_several_requests() {
    let up = Upstream::start().await;
    let client = http_client();
    for i in 0..3 {
        let resp = client
            .get(format!("{}/n/{i}", up.url()))
            .send()
            .await
            .expect("send request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("read body");
    }
    let uris: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/n/0", "/n/1", "/n/2"]);
}

#[tokio::test]
async fn dropping_the_upstream_stops_it() {
    let up = Upstream::start().await;
    let url = up.url();
    let client = http_client();
    let resp = client.get(&url).send().await.expect("upstream answers");
    resp.bytes().await.expect("read body");
    drop(up);
    // Both a pooled keep-alive connection and a fresh one must fail.
    let pooled = client
        .get(&url)
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(
        pooled.is_err(),
        "pooled connection still answered: {pooled:?}"
    );
    let fresh = http_client()
        .get(&url)
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(fresh.is_err(), "fresh connection still answered: {fresh:?}");
}
