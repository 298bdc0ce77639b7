//! A data plane in memory, for tests of the core and of the driver's batches: it keeps
//! what an aya data plane would hold, logs every write, and can be told to refuse one.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use lb_common::{
    Counters, FlowKey, FlowValue, MAGLEV_SIZE, NO_REAL, RealInfo, Reason, VipInfo, VipKey,
};

use super::dataplane::DataplaneOps;
use crate::core::tables::vip_slots;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeDataplane {
    pub clock: u32,
    pub nat: bool,
    pub reals: BTreeMap<u32, RealInfo>,
    pub maglev: BTreeMap<u32, Vec<u32>>,
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub flows: Vec<(FlowKey, FlowValue)>,
    pub real_counters: HashMap<u32, Counters>,
    pub vip_counters: HashMap<u32, Counters>,
    /// Every write, in order, as `set_real 3`, `set_vips 2`, ...
    pub log: Vec<String>,
    /// Refuse one write, after this many more succeed.
    pub fail_after: Option<usize>,
}

impl FakeDataplane {
    fn write(&mut self, what: String) -> Result<()> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                // Once: the undo that follows must go through.
                self.fail_after = None;
                bail!("refused by the fake data plane: {what}");
            }
            *n -= 1;
        }
        self.log.push(what);
        Ok(())
    }

    /// The Maglev table of VIP `index`, all empty if never written.
    pub fn table(&self, index: u32) -> Vec<u32> {
        self.maglev.get(&index).cloned().unwrap_or_else(|| vec![NO_REAL; MAGLEV_SIZE as usize])
    }

    /// The state, without the log: what a packet would see.
    pub fn state(&self) -> FakeDataplane {
        FakeDataplane { log: Vec::new(), fail_after: None, ..self.clone() }
    }
}

impl DataplaneOps for FakeDataplane {
    fn set_clock(&mut self, seconds: u32) -> Result<()> {
        self.write(format!("set_clock {seconds}"))?;
        self.clock = seconds;
        Ok(())
    }
    fn set_nat(&mut self, on: bool) -> Result<()> {
        self.write(format!("set_nat {on}"))?;
        self.nat = on;
        Ok(())
    }
    fn set_real(&mut self, id: u32, real: RealInfo) -> Result<()> {
        self.write(format!("set_real {id}"))?;
        if real == RealInfo::default() {
            self.reals.remove(&id);
        } else {
            self.reals.insert(id, real);
        }
        Ok(())
    }
    fn set_maglev(&mut self, index: u32, table: &[u32]) -> Result<usize> {
        self.write(format!("set_maglev {index}"))?;
        let old = self.table(index);
        let changed = old.iter().zip(table).filter(|(a, b)| a != b).count();
        if table.iter().all(|&r| r == NO_REAL) {
            self.maglev.remove(&index);
        } else {
            self.maglev.insert(index, table.to_vec());
        }
        Ok(changed)
    }
    fn set_vips(&mut self, vips: &BTreeMap<VipKey, VipInfo>) -> Result<()> {
        vip_slots(vips)?;
        self.write(format!("set_vips {}", vips.len()))?;
        self.vips = vips.clone();
        Ok(())
    }
    fn reset_real_counters(&mut self, id: u32) -> Result<Vec<Counters>> {
        self.write(format!("reset_real_counters {id}"))?;
        Ok(vec![self.real_counters.remove(&id).unwrap_or_default()])
    }
    fn reset_vip_counters(&mut self, index: u32) -> Result<Vec<Counters>> {
        self.write(format!("reset_vip_counters {index}"))?;
        Ok(vec![self.vip_counters.remove(&index).unwrap_or_default()])
    }
    fn restore_real_counters(&mut self, id: u32, held: &[Counters]) -> Result<()> {
        self.write(format!("restore_real_counters {id}"))?;
        restore(&mut self.real_counters, id, held);
        Ok(())
    }
    fn restore_vip_counters(&mut self, index: u32, held: &[Counters]) -> Result<()> {
        self.write(format!("restore_vip_counters {index}"))?;
        restore(&mut self.vip_counters, index, held);
        Ok(())
    }
    fn purge_vip(&mut self, vip: &VipKey) -> usize {
        self.log.push("purge_vip".into());
        let before = self.flows.len();
        self.flows.retain(|(k, _)| {
            !(k.dst == vip.addr
                && k.dport_be == vip.port_be
                && k.proto == vip.proto
                && k.family == vip.family)
        });
        before - self.flows.len()
    }
    fn vip_counters(&self, index: u32) -> Result<Counters> {
        Ok(self.vip_counters.get(&index).copied().unwrap_or_default())
    }
    fn real_counters(&self, id: u32) -> Result<Counters> {
        Ok(self.real_counters.get(&id).copied().unwrap_or_default())
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Ok(Reason::ALL.iter().map(|&r| (r, 0)).collect())
    }
    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.clone()
    }
}

/// One CPU's worth, as the fake keeps them; all zero is no entry, as before any packet.
fn restore(counters: &mut HashMap<u32, Counters>, at: u32, held: &[Counters]) {
    match held.first().copied().filter(|c| *c != Counters::default()) {
        Some(c) => {
            counters.insert(at, c);
        }
        None => {
            counters.remove(&at);
        }
    }
}
