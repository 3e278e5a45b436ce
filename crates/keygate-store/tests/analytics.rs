//! Analytics on both backends: counts add up across flushes (and with usage, in one
//! transaction), filters and groupings answer exactly, hostile filter values are only values,
//! the row limit is reported, and one node at a time prunes what is past the retention.

use std::time::Duration;

use keygate_store::{
    AnalyticsBatch, AnalyticsQuery, Dimension, GroupValue, LatencyCount, LatencyQuery, Page,
    RequestCount, UsageRow, WsCount, HOUR_MS, LATENCY_BUCKETS, MAX_ANALYTICS_ROWS,
};

mod common;

use common::{suite, Fixture, T0};

const H0: i64 = T0 / HOUR_MS;

fn req(hour: i64, client: &str, key: &str, route: &str, status: u16, n: u64) -> RequestCount {
    RequestCount {
        hour,
        client_id: client.into(),
        key_id: key.into(),
        route: route.into(),
        status,
        requests: n,
    }
}

fn batch(requests: Vec<RequestCount>) -> AnalyticsBatch {
    AnalyticsBatch {
        requests,
        ..AnalyticsBatch::default()
    }
}

fn query(group_by: &[Dimension]) -> AnalyticsQuery {
    AnalyticsQuery {
        from_hour: H0 - 48,
        to_hour: H0 + 48,
        group_by: group_by.to_vec(),
        ..AnalyticsQuery::default()
    }
}

fn text(s: &str) -> GroupValue {
    GroupValue::Text(s.into())
}

/// `(groups, requests)` of each row.
async fn rows(f: &Fixture, q: &AnalyticsQuery) -> Vec<(Vec<GroupValue>, u64)> {
    let r = f.store.analytics(q).await.unwrap();
    assert!(!r.more);
    r.rows.into_iter().map(|r| (r.groups, r.requests)).collect()
}

async fn counts_add_up_across_flushes_and_with_usage(f: Fixture) {
    let s = &f.store;
    let usage = UsageRow {
        client_id: "cli_000000000000000a".into(),
        day: "2026-09-21".into(),
        status: 200,
        requests: 3,
    };
    let first = AnalyticsBatch {
        requests: vec![
            req(
                H0,
                "cli_000000000000000a",
                "key_000000000000000a",
                "odds",
                200,
                2,
            ),
            req(
                H0,
                "cli_000000000000000a",
                "key_000000000000000a",
                "odds",
                429,
                1,
            ),
        ],
        latency: vec![LatencyCount {
            hour: H0,
            route: "odds".into(),
            upstream: "feed".into(),
            count: 2,
            sum_us: 3_000,
            buckets: {
                let mut b = [0; LATENCY_BUCKETS];
                b[0] = 1;
                b[1] = 1;
                b
            },
        }],
        ws: vec![WsCount {
            hour: H0,
            client_id: "cli_000000000000000a".into(),
            sessions: 1,
            messages: 5,
            bytes: 50,
        }],
    };
    s.add_counts(std::slice::from_ref(&usage), &[], &first)
        .await
        .unwrap();
    s.add_counts(std::slice::from_ref(&usage), &[], &first)
        .await
        .unwrap();
    s.add_counts(&[], &[], &AnalyticsBatch::default())
        .await
        .unwrap();
    let c = keygate_core::ClientId::parse("cli_000000000000000a").unwrap();
    assert_eq!(
        s.usage(&c, "2026-09-21", "2026-09-21").await.unwrap()[0].requests,
        6,
        "usage rows are added in the same call"
    );
    assert_eq!(
        rows(&f, &query(&[Dimension::Status])).await,
        [
            (vec![GroupValue::Number(200)], 4),
            (vec![GroupValue::Number(429)], 2)
        ]
    );
    let lat = s
        .analytics_latency(&LatencyQuery {
            from_hour: H0,
            to_hour: H0,
            ..LatencyQuery::default()
        })
        .await
        .unwrap()
        .rows;
    assert_eq!(lat.len(), 1);
    assert_eq!((lat[0].count, lat[0].sum_us), (4, 6_000));
    assert_eq!(&lat[0].buckets[..3], [2, 2, 0]);
    let ws = s
        .analytics_ws(H0, H0, None, Page::default())
        .await
        .unwrap()
        .rows;
    assert_eq!((ws[0].sessions, ws[0].messages, ws[0].bytes), (2, 10, 100));
    assert!(s
        .analytics_ws(H0 + 1, H0 + 2, None, Page::default())
        .await
        .unwrap()
        .rows
        .is_empty());
}

async fn filters_and_groupings_answer_exactly(f: Fixture) {
    let (a, b) = ("cli_000000000000000a", "cli_000000000000000b");
    let (ka, kb) = ("key_000000000000000a", "key_000000000000000b");
    f.store
        .add_counts(
            &[],
            &[],
            &batch(vec![
                req(H0, a, ka, "odds", 200, 5),
                req(H0, a, ka, "odds", 404, 1),
                req(H0 + 1, a, ka, "scores", 200, 2),
                req(H0 + 1, b, kb, "odds", 429, 3),
                req(H0 + 30, b, kb, "scores", 200, 7),
                // Outside the queried range.
                req(H0 - 100, a, ka, "odds", 200, 1000),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(rows(&f, &query(&[])).await, [(vec![], 18)]);
    assert_eq!(
        rows(&f, &query(&[Dimension::Route, Dimension::Status])).await,
        [
            (vec![text("odds"), GroupValue::Number(200)], 5),
            (vec![text("odds"), GroupValue::Number(404)], 1),
            (vec![text("odds"), GroupValue::Number(429)], 3),
            (vec![text("scores"), GroupValue::Number(200)], 9),
        ]
    );
    assert_eq!(
        rows(&f, &query(&[Dimension::Day])).await,
        [
            (vec![GroupValue::Number(H0 / 24)], 11),
            (vec![GroupValue::Number((H0 + 30) / 24)], 7)
        ],
        "T0 is 14:00 UTC: H0 and H0 + 1 are one day, H0 + 30 the next"
    );
    assert_eq!(
        rows(&f, &query(&[Dimension::Hour]))
            .await
            .iter()
            .map(|r| r.1)
            .collect::<Vec<_>>(),
        [6, 5, 7]
    );
    let mut q = query(&[Dimension::Key]);
    q.client = Some(b.into());
    assert_eq!(rows(&f, &q).await, [(vec![text(kb)], 10)]);
    let mut q = query(&[Dimension::Client]);
    q.route = Some("odds".into());
    q.status = Some(429);
    assert_eq!(rows(&f, &q).await, [(vec![text(b)], 3)]);
    let mut q = query(&[]);
    q.key = Some(ka.into());
    q.to_hour = H0;
    assert_eq!(rows(&f, &q).await, [(vec![], 6)]);
    // Hostile values are values: they match nothing and change nothing.
    for hostile in [
        "odds' OR '1'='1",
        "odds\"; DROP TABLE analytics_requests; --",
        "%",
        "*",
    ] {
        let mut q = query(&[]);
        q.route = Some(hostile.into());
        assert!(rows(&f, &q).await.is_empty(), "{hostile}");
    }
    assert_eq!(rows(&f, &query(&[])).await, [(vec![], 18)]);
}

async fn a_query_past_the_row_limit_says_so(f: Fixture) {
    let many: Vec<RequestCount> = (0..=MAX_ANALYTICS_ROWS)
        .map(|i| {
            req(
                H0,
                "cli_000000000000000a",
                "key_000000000000000a",
                &format!("r{i:05}"),
                200,
                1,
            )
        })
        .collect();
    f.store.add_counts(&[], &[], &batch(many)).await.unwrap();
    let r = f
        .store
        .analytics(&query(&[Dimension::Route]))
        .await
        .unwrap();
    assert!(r.more);
    assert_eq!(r.rows.len(), MAX_ANALYTICS_ROWS);
    let total = f.store.analytics(&query(&[])).await.unwrap();
    assert!(!total.more);
    assert_eq!(total.rows[0].requests, MAX_ANALYTICS_ROWS as u64 + 1);

    // Pages of 3,000 walk every row once, in order, the last one saying there is no more.
    let mut seen = Vec::new();
    let mut q = query(&[Dimension::Route]);
    q.page.limit = 3_000;
    loop {
        let page = f.store.analytics(&q).await.unwrap();
        assert!(page.rows.len() <= 3_000);
        seen.extend(page.rows.into_iter().map(|r| r.groups));
        if !page.more {
            break;
        }
        q.page.offset += 3_000;
    }
    let expected: Vec<Vec<GroupValue>> = (0..=MAX_ANALYTICS_ROWS)
        .map(|i| vec![text(&format!("r{i:05}"))])
        .collect();
    assert_eq!(seen, expected);
    // A limit past the cap is held to it; an offset past the end is an empty last page.
    q.page = Page {
        offset: 0,
        limit: usize::MAX,
    };
    assert_eq!(
        f.store.analytics(&q).await.unwrap().rows.len(),
        MAX_ANALYTICS_ROWS
    );
    q.page.offset = u64::MAX;
    let past = f.store.analytics(&q).await.unwrap();
    assert!(past.rows.is_empty() && !past.more);
}

async fn one_node_prunes_past_the_retention_per_period(f: Fixture) {
    let s = &f.store;
    let day = 24;
    s.add_counts(
        &[],
        &[],
        &AnalyticsBatch {
            requests: vec![
                req(
                    H0 - 3 * day,
                    "cli_000000000000000a",
                    "key_000000000000000a",
                    "odds",
                    200,
                    1,
                ),
                req(
                    H0 - day,
                    "cli_000000000000000a",
                    "key_000000000000000a",
                    "odds",
                    200,
                    2,
                ),
            ],
            ws: vec![WsCount {
                hour: H0 - 3 * day,
                client_id: "cli_000000000000000a".into(),
                sessions: 1,
                ..WsCount::default()
            }],
            latency: vec![],
        },
    )
    .await
    .unwrap();
    let retention = Duration::from_secs(2 * 86_400);
    let every = Duration::from_secs(3600);
    assert_eq!(
        s.prune_analytics("node-a", retention, every).await.unwrap(),
        Some(2),
        "the request row and the WebSocket row three days old"
    );
    assert_eq!(
        s.prune_analytics("node-b", retention, every).await.unwrap(),
        None,
        "node-a's claim holds for the period"
    );
    assert_eq!(rows(&f, &query(&[])).await, [(vec![], 2)]);
    f.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        s.prune_analytics("node-b", retention, every).await.unwrap(),
        Some(0),
        "after the period the next node to ask prunes"
    );
    f.clock.advance(Duration::from_secs(2 * 86_400));
    assert_eq!(
        s.prune_analytics("node-a", retention, every).await.unwrap(),
        Some(1)
    );
    assert!(rows(&f, &query(&[])).await.is_empty());
}

suite!(
    "kg_analytics";
    counts_add_up_across_flushes_and_with_usage,
    filters_and_groupings_answer_exactly,
    a_query_past_the_row_limit_says_so,
    one_node_prunes_past_the_retention_per_period,
);
