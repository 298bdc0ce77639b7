//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), building the
//! lookup table the data plane indexes with the flow hash. Each real walks its own permutation
//! of the slots, derived from a stable key (its address), so adding or removing one real
//! moves few slots; weights give a real proportionally more turns (as Katran does).

use std::vec;
use std::vec::Vec;

use xxhash_rust::xxh64::xxh64;

use crate::NO_REAL;

/// One real as the builder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// Stable identity of the real (for example "10.0.0.11:80"): the same key always gets
    /// the same permutation, whatever the order or ids of the other reals.
    pub key: &'a [u8],
    pub weight: u32,
    /// The value written into the slots this real wins (the data plane's real id).
    pub id: u32,
}

/// Builds a table of `size` slots (`size` must be prime). Reals of weight 0 get no slot; a
/// table without any weighted real is all [`NO_REAL`].
pub fn build(entries: &[Entry<'_>], size: u32) -> Vec<u32> {
    let m = u64::from(size);
    let mut table = vec![NO_REAL; size as usize];
    let mut reals: Vec<(Entry<'_>, u64, u64)> = entries
        .iter()
        .filter(|e| e.weight > 0)
        .map(|e| {
            let offset = xxh64(e.key, 0x6d61_676c) % m;
            let skip = xxh64(e.key, 0x6576_6c69) % (m - 1) + 1;
            (*e, offset, skip)
        })
        .collect();
    if reals.is_empty() {
        return table;
    }
    // The turn order must not depend on the order of the configuration.
    reals.sort_by(|a, b| a.0.key.cmp(b.0.key));
    let max_weight = reals.iter().map(|r| u64::from(r.0.weight)).max().unwrap_or(1);
    let mut next = vec![0u64; reals.len()];
    let mut credit = vec![0u64; reals.len()];
    let mut filled = 0u64;
    loop {
        for (i, (entry, offset, skip)) in reals.iter().enumerate() {
            credit[i] += u64::from(entry.weight);
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            // Each real's permutation visits every slot once (skip < m and m prime), and
            // at least one slot is free, so this ends within m steps.
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == NO_REAL {
                    table[slot] = entry.id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return table;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::format;
    use std::string::String;

    use super::*;
    use crate::MAGLEV_SIZE;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:80", i + 11)).collect()
    }

    fn equal(keys: &[String]) -> Vec<Entry<'_>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| Entry { key: k.as_bytes(), weight: 1, id: i as u32 })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut count = vec![0usize; n];
        for &id in table {
            count[id as usize] += 1;
        }
        count.iter().map(|&c| c as f64 / table.len() as f64).collect()
    }

    #[test]
    fn equal_weights_get_equal_shares() {
        let keys = keys(10);
        let entries = equal(&keys);
        let table = build(&entries, MAGLEV_SIZE);
        for share in shares(&table, 10) {
            assert!((share - 0.1).abs() <= 0.1 * 0.01, "share {share}");
        }
    }

    #[test]
    fn removing_one_of_ten_moves_few_slots() {
        let keys = keys(10);
        let entries = equal(&keys);
        let before = build(&entries, MAGLEV_SIZE);
        let after = build(&entries[1..], MAGLEV_SIZE);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let moved = moved as f64 / f64::from(MAGLEV_SIZE);
        // The removed real's tenth must move; the paper's bound allows a little more.
        assert!(moved >= 0.099, "moved {moved}");
        assert!(moved <= 0.12, "moved {moved}");
        // No slot of the removed real survives.
        assert!(!after.contains(&0));
    }

    #[test]
    fn weights_one_to_two_give_shares_one_to_two() {
        let entries = [
            Entry { key: b"10.0.0.11:80", weight: 100, id: 0 },
            Entry { key: b"10.0.0.12:80", weight: 200, id: 1 },
        ];
        let s = shares(&build(&entries, MAGLEV_SIZE), 2);
        assert!((s[1] / s[0] - 2.0).abs() <= 0.02, "{s:?}");
    }

    #[test]
    fn zero_weight_and_empty_tables() {
        let entries =
            [Entry { key: b"a", weight: 0, id: 0 }, Entry { key: b"b", weight: 3, id: 1 }];
        assert!(build(&entries, 13).iter().all(|&id| id == 1));
        assert!(build(&entries[..1], 13).iter().all(|&id| id == NO_REAL));
    }

    #[test]
    fn order_of_entries_does_not_matter() {
        let a = [Entry { key: b"x", weight: 1, id: 0 }, Entry { key: b"y", weight: 2, id: 1 }];
        let b = [a[1], a[0]];
        assert_eq!(build(&a, 251), build(&b, 251));
    }
}
