//! The seam between the core's operations and a data plane: the [`DataplaneOps`] trait
//! (the aya implementation is crate::dataplane, a fake stands in for it in tests), and
//! [`apply`], which runs a batch whole or undoes what it had written.

use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::{Counters, FlowKey, FlowValue, NO_REAL, RealInfo, Reason, VipInfo, VipKey};
use tracing::{debug, error};

use crate::core::{Batch, Op};

/// What the driver asks of a data plane: the writes the core's operations name, and the
/// reads behind listings and status.
pub trait DataplaneOps {
    fn set_clock(&mut self, seconds: u32) -> Result<()>;
    fn set_nat(&mut self, on: bool) -> Result<()>;
    fn set_real(&mut self, id: u32, real: RealInfo) -> Result<()>;
    /// Stores VIP `index`'s table; returns how many slots differed.
    fn set_maglev(&mut self, index: u32, table: &[u32]) -> Result<usize>;
    /// Makes `vips` the whole VIPS table at once.
    fn set_vips(&mut self, vips: &BTreeMap<VipKey, VipInfo>) -> Result<()>;
    /// Zeroes a real's counters; returns what they held (per CPU), for an undo.
    fn reset_real_counters(&mut self, id: u32) -> Result<Vec<Counters>>;
    fn reset_vip_counters(&mut self, index: u32) -> Result<Vec<Counters>>;
    fn restore_real_counters(&mut self, id: u32, held: &[Counters]) -> Result<()>;
    fn restore_vip_counters(&mut self, index: u32, held: &[Counters]) -> Result<()>;
    /// Deletes a VIP's flows; returns how many.
    fn purge_vip(&mut self, vip: &VipKey) -> usize;

    fn vip_counters(&self, index: u32) -> Result<Counters>;
    fn real_counters(&self, id: u32) -> Result<Counters>;
    fn reasons(&self) -> Result<Vec<(Reason, u64)>>;
    fn flows(&self) -> Vec<(FlowKey, FlowValue)>;
}

/// Runs `batch` in order. If an operation fails, the ones before it are undone in
/// reverse (each carries what it overwrote; a counter reset, what it read before zeroing)
/// and the error names the one that failed, so the data plane holds what it held before
/// the batch.
pub fn apply(dp: &mut impl DataplaneOps, batch: &Batch) -> Result<(), String> {
    let mut held: Vec<Vec<Counters>> = Vec::with_capacity(batch.ops.len());
    for (done, op) in batch.ops.iter().enumerate() {
        match run(dp, op) {
            Ok(counters) => held.push(counters),
            Err(e) => {
                let why = format!("{}: {e:#}", describe(op));
                undo_all(dp, &batch.ops[..done], &held);
                return Err(why);
            }
        }
    }
    Ok(())
}

fn undo_all(dp: &mut impl DataplaneOps, done: &[Op], held: &[Vec<Counters>]) {
    for (op, counters) in done.iter().zip(held).rev() {
        if let Err(e) = undo(dp, op, counters) {
            // Nothing more can be done: say so loudly, the next sync rewrites it.
            error!(error = %format!("{e:#}"), op = describe(op), "undoing a failed batch");
        }
    }
}

/// Runs one op; a counter reset returns what it zeroed, every other op nothing.
fn run(dp: &mut impl DataplaneOps, op: &Op) -> Result<Vec<Counters>> {
    match op {
        Op::SetClock(s) => dp.set_clock(*s)?,
        Op::SetNat { on, .. } => dp.set_nat(*on)?,
        Op::SetReal { id, info, .. } => dp.set_real(*id, *info)?,
        Op::SetMaglev { index, table, .. } => {
            let changed = dp.set_maglev(*index, table)?;
            debug!(index, slots_changed = changed, "maglev table written");
        }
        Op::SetVips { vips, .. } => dp.set_vips(vips)?,
        Op::ResetRealCounters(id) => return dp.reset_real_counters(*id),
        Op::ResetVipCounters(index) => return dp.reset_vip_counters(*index),
        Op::PurgeVip(key) => {
            let purged = dp.purge_vip(key);
            debug!(flows = purged, "a removed VIP's flows deleted");
        }
    }
    Ok(Vec::new())
}

/// Undoes one op that ran; `held` is what `run` returned for it.
fn undo(dp: &mut impl DataplaneOps, op: &Op, held: &[Counters]) -> Result<()> {
    match op {
        Op::SetNat { was, .. } => dp.set_nat(*was),
        Op::SetReal { id, was, .. } => dp.set_real(*id, *was),
        Op::SetMaglev { index, was, table } => match was {
            Some(was) => dp.set_maglev(*index, was).map(drop),
            None => dp.set_maglev(*index, &vec![NO_REAL; table.len()]).map(drop),
        },
        Op::SetVips { was, .. } => dp.set_vips(was),
        Op::ResetRealCounters(id) => dp.restore_real_counters(*id, held),
        Op::ResetVipCounters(index) => dp.restore_vip_counters(*index, held),
        // A clock a second late, deleted flows: nothing to restore (purges come last in a
        // batch, after everything that can fail).
        Op::SetClock(_) | Op::PurgeVip(_) => Ok(()),
    }
}

fn describe(op: &Op) -> String {
    match op {
        Op::SetClock(_) => "writing the clock".into(),
        Op::SetNat { .. } => "writing the NAT setting".into(),
        Op::SetReal { id, .. } => format!("writing REALS[{id}]"),
        Op::SetMaglev { index, .. } => format!("writing VIP {index}'s Maglev table"),
        Op::SetVips { .. } => "writing VIPS".into(),
        Op::ResetRealCounters(id) => format!("resetting REAL_STATS[{id}]"),
        Op::ResetVipCounters(index) => format!("resetting VIP_STATS[{index}]"),
        Op::PurgeVip(_) => "purging flows".into(),
    }
}
