//! Quota top-ups and resets (`keygate client quota`, `POST /v1/clients/{id}/quota`): an
//! operator's change to one client's current quota window, stored, audited and followed by
//! every node through the change feed like any other write.
//!
//! A top-up raises the allowance of the window holding `now` only; the next window starts
//! from the plan again. A reset counts one more generation of the window: every node's
//! limiter then counts the window in a fresh counter (the checks' `epoch`), so the count is
//! zero everywhere without a node having to delete anything. Rows live until their window
//! ends; what a node holds is the rows of the windows in progress.

use keygate_core::limit::Window;
use keygate_core::{ClientId, Timestamp};
use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Actor, Store, StoreError};

/// The most one top-up adds: a typo's extra digits are refused, not granted.
pub const MAX_TOPUP: u64 = 1_000_000_000;
/// The most a window's top-ups add up to (well inside the limiters' exact integers, 2^53).
pub const MAX_TOPUP_TOTAL: u64 = 1_000_000_000_000;
/// The most resets of one window (each is a counter generation).
pub const MAX_RESETS: u64 = 10_000;

/// One client's adjustments of one quota window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaAdjustment {
    pub client_id: ClientId,
    pub window: Window,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    /// Added to the plan's allowance for this window.
    pub topup: u64,
    /// Resets so far: the limiters' counter generation for this window.
    pub resets: u32,
}

/// A window's name (`hour`, `day`, `month`), as the CLI and the admin API take it.
///
/// # Errors
/// [`StoreError::InvalidQuota`] naming the word.
pub fn parse_window(word: &str) -> Result<Window, StoreError> {
    Window::ALL
        .into_iter()
        .find(|w| w.as_str() == word)
        .ok_or_else(|| {
            StoreError::InvalidQuota(format!(
                "unknown quota window `{}`; use hour, day or month",
                word.chars().take(32).collect::<String>()
            ))
        })
}

const COLUMNS: &str = "client_id, window_kind, window_start, window_end, topup, resets";

fn row(r: &AnyRow) -> Result<QuotaAdjustment, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("quota adjustment: {e}"));
    let client: String = r.try_get("client_id")?;
    let window: String = r.try_get("window_kind")?;
    let topup: i64 = r.try_get("topup")?;
    let resets: i64 = r.try_get("resets")?;
    Ok(QuotaAdjustment {
        client_id: ClientId::parse(&client).map_err(|e| corrupt(&e))?,
        window: parse_window(&window).map_err(|e| corrupt(&e))?,
        window_start: Timestamp::from_millis(r.try_get("window_start")?),
        window_end: Timestamp::from_millis(r.try_get("window_end")?),
        topup: u64::try_from(topup).map_err(|e| corrupt(&e))?,
        resets: u32::try_from(resets).map_err(|e| corrupt(&e))?,
    })
}

/// The adjustments of the windows in progress at `now`: what every node holds.
pub(crate) async fn read_live<'e, E>(
    exec: E,
    now: Timestamp,
) -> Result<Vec<QuotaAdjustment>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM quota_adjustments WHERE window_start <= $1 AND window_end > $1 \
         ORDER BY client_id, window_kind"
    ))
    .bind(now.as_millis())
    .fetch_all(exec)
    .await?;
    rows.iter().map(row).collect()
}

/// What one write changes: units to add, or one reset.
#[derive(Clone, Copy)]
enum Change {
    TopUp(u64),
    Reset,
}

/// One window's change inside `tx`.
async fn adjust_one(
    tx: &mut crate::WriteTx,
    actor: &Actor,
    id: &str,
    window: Window,
    change: Change,
) -> Result<QuotaAdjustment, StoreError> {
    let (start, end) = window.bounds(tx.now);
    let (topup, resets) = match change {
        Change::TopUp(n) => (i64::try_from(n).unwrap_or(i64::MAX), 0),
        Change::Reset => (0, 1),
    };
    let saved = sqlx::query(&format!(
        "INSERT INTO quota_adjustments (client_id, window_kind, window_start, window_end, \
         topup, resets, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (client_id, window_kind, window_start) DO UPDATE SET \
         topup = quota_adjustments.topup + excluded.topup, \
         resets = quota_adjustments.resets + excluded.resets, \
         updated_at = excluded.updated_at, version = excluded.version \
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(window.as_str())
    .bind(start.as_millis())
    .bind(end.as_millis())
    .bind(topup)
    .bind(resets)
    .bind(tx.now.as_millis())
    .bind(tx.version)
    .fetch_one(&mut *tx.tx)
    .await?;
    let saved = row(&saved)?;
    // Dropping `tx` rolls the write back.
    if saved.topup > MAX_TOPUP_TOTAL {
        return Err(StoreError::InvalidQuota(format!(
            "top-ups of one window add up to at most {MAX_TOPUP_TOTAL} units"
        )));
    }
    if u64::from(saved.resets) > MAX_RESETS {
        return Err(StoreError::InvalidQuota(format!(
            "a window is reset at most {MAX_RESETS} times"
        )));
    }
    let action = match change {
        Change::TopUp(_) => "client.quota_topup",
        Change::Reset => "client.quota_reset",
    };
    tx.change("quota", &format!("{id}:{}", window.as_str()), action)
        .await?;
    let mut detail = json!({
        "window": window.as_str(),
        "window_start": start,
        "topup": saved.topup,
        "resets": saved.resets,
    });
    if let Change::TopUp(n) = change {
        detail["add"] = n.into();
    }
    tx.audit(actor, action, id, detail).await?;
    Ok(saved)
}

impl Store {
    /// Adds `add` (1 to [`MAX_TOPUP`]) to `client`'s allowance in its current `window`; every
    /// node admits that many more within its feed interval. Audited as `client.quota_topup`.
    ///
    /// # Errors
    /// [`StoreError::InvalidQuota`] for `add` out of bounds or a window total past
    /// [`MAX_TOPUP_TOTAL`], [`StoreError::ClientNotFound`].
    pub async fn quota_topup(
        &self,
        actor: &Actor,
        client: &str,
        window: Window,
        add: u64,
    ) -> Result<QuotaAdjustment, StoreError> {
        if !(1..=MAX_TOPUP).contains(&add) {
            return Err(StoreError::InvalidQuota(format!(
                "a top-up adds 1 to {MAX_TOPUP} units"
            )));
        }
        let mut saved = self
            .adjust(actor, client, &[window], Change::TopUp(add))
            .await?;
        Ok(saved.remove(0))
    }

    /// Zeroes `client`'s count in each of its current `windows` on every node (within its
    /// feed interval), in one write; top-ups of the windows stay. Audited as
    /// `client.quota_reset`, once per window.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`], [`StoreError::InvalidQuota`] for no window or past
    /// [`MAX_RESETS`].
    pub async fn quota_reset(
        &self,
        actor: &Actor,
        client: &str,
        windows: &[Window],
    ) -> Result<Vec<QuotaAdjustment>, StoreError> {
        if windows.is_empty() {
            return Err(StoreError::InvalidQuota(
                "name a window to reset".to_owned(),
            ));
        }
        self.adjust(actor, client, windows, Change::Reset).await
    }

    async fn adjust(
        &self,
        actor: &Actor,
        client: &str,
        windows: &[Window],
        change: Change,
    ) -> Result<Vec<QuotaAdjustment>, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = crate::clients::find(&mut tx, client)
            .await?
            .ok_or_else(|| StoreError::ClientNotFound(client.to_owned()))?
            .id;
        let mut out = Vec::with_capacity(windows.len());
        for &window in windows {
            out.push(adjust_one(&mut tx, actor, id.as_str(), window, change).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// `client`'s id and the adjustments of its windows in progress.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`].
    pub async fn quota_adjustments(
        &self,
        client: &str,
    ) -> Result<(ClientId, Vec<QuotaAdjustment>), StoreError> {
        let found = self.client(client).await?;
        let now = self.now();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM quota_adjustments WHERE client_id = $1 \
             AND window_start <= $2 AND window_end > $2 ORDER BY window_kind"
        ))
        .bind(found.id.as_str())
        .bind(now.as_millis())
        .fetch_all(&self.pool)
        .await?;
        let list = rows.iter().map(row).collect::<Result<_, _>>()?;
        Ok((found.id, list))
    }
}
