//! Quota top-ups and resets on both backends: stored per client and current window, summed,
//! bounded, audited, followed by the feed (snapshot and delta), and gone from the live set
//! when their window ends.

use std::time::Duration;

use keygate_core::limit::Window;
use keygate_core::Timestamp;
use keygate_store::{Actor, AuditFilter, NewClient, StoreError, MAX_TOPUP};

mod common;

use common::{suite, Fixture, T0};

fn actor() -> Actor {
    Actor("test:quota".into())
}

async fn top_ups_and_resets_are_stored_summed_audited_and_fed(f: Fixture) {
    let s = &f.store;
    let client = s
        .create_client(
            &actor(),
            NewClient {
                name: "Acme".into(),
                plan: "pro".into(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    let before = s.version().await.unwrap();
    let a = s
        .quota_topup(&actor(), "Acme", Window::Day, 5)
        .await
        .unwrap();
    let b = s
        .quota_topup(&actor(), client.id.as_str(), Window::Day, 7)
        .await
        .unwrap();
    assert_eq!((a.topup, b.topup, b.resets), (5, 12, 0));
    let (start, end) = Window::Day.bounds(Timestamp::from_millis(T0));
    assert_eq!((b.window_start, b.window_end), (start, end));
    let reset = s
        .quota_reset(&actor(), "Acme", &[Window::Day, Window::Hour])
        .await
        .unwrap();
    assert_eq!(
        reset
            .iter()
            .map(|r| (r.window, r.topup, r.resets))
            .collect::<Vec<_>>(),
        vec![(Window::Day, 12, 1), (Window::Hour, 0, 1)]
    );

    // Refused: out of bounds, unknown client, no window; nothing written by them.
    for add in [0, MAX_TOPUP + 1, u64::MAX] {
        assert!(matches!(
            s.quota_topup(&actor(), "Acme", Window::Day, add).await,
            Err(StoreError::InvalidQuota(_))
        ));
    }
    assert!(matches!(
        s.quota_topup(&actor(), "Nobody", Window::Day, 1).await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert!(matches!(
        s.quota_reset(&actor(), "Acme", &[]).await,
        Err(StoreError::InvalidQuota(_))
    ));
    assert!(keygate_store::parse_window("week").is_err());
    assert_eq!(keygate_store::parse_window("month").unwrap(), Window::Month);

    // Every node follows it: the delta and the snapshot carry the live adjustments.
    let delta = s.delta_since(before).await.unwrap();
    let live = delta.quotas.expect("the version moved");
    assert_eq!(live.len(), 2);
    assert_eq!(s.snapshot().await.unwrap().quotas, live);
    let (id, mine) = s.quota_adjustments("Acme").await.unwrap();
    assert_eq!((id, mine.len()), (client.id.clone(), 2));

    // Audited: two top-ups, two resets, with what changed.
    let audit = s
        .audit(&AuditFilter {
            action: Some("client.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "client.quota_topup")
            .count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "client.quota_reset")
            .count(),
        2
    );

    // An hour later the hour's row is over; the next day both are, and a new top-up starts
    // a new row at zero.
    f.clock.advance(Duration::from_secs(3600));
    assert_eq!(s.snapshot().await.unwrap().quotas.len(), 1);
    f.clock.advance(Duration::from_secs(86_400));
    assert!(s.snapshot().await.unwrap().quotas.is_empty());
    let next = s
        .quota_topup(&actor(), "Acme", Window::Day, 1)
        .await
        .unwrap();
    assert_eq!((next.topup, next.resets), (1, 0));
}

suite!(
    "kg_quotas";
    top_ups_and_resets_are_stored_summed_audited_and_fed,
);
