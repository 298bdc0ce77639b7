//! A BPF array made with BPF_F_MMAPABLE, mapped into lbd's memory: lbd and the data plane
//! share its entries, so reading or writing thousands of them costs no syscall each. The
//! data plane may write at any moment: callers read and write entries volatile or atomic.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use memmap2::{MmapOptions, MmapRaw};

/// An array map of `len` entries of `T`, mapped.
pub struct MappedArray<T> {
    mem: MmapRaw,
    len: usize,
    /// Keeps the map's fd open beside the mapping.
    _map: MapData,
    _entries: PhantomData<T>,
}

impl<T> MappedArray<T> {
    /// Takes map `name` out of `ebpf` and maps it, after checking it is an array of `len`
    /// entries of `T` (the layout this build of lbd shares with the data plane).
    pub fn take(ebpf: &mut Ebpf, name: &str, len: u32) -> Result<Self> {
        let Map::Array(map) = super::take_map(ebpf, name)? else {
            bail!("map {name} is not an array")
        };
        let info = map.info().with_context(|| format!("reading map {name}'s info"))?;
        ensure!(
            info.value_size() as usize == size_of::<T>() && info.max_entries() == len,
            "map {name}: {} entries of {} bytes, this lbd expects {len} of {}",
            info.max_entries(),
            info.value_size(),
            size_of::<T>()
        );
        let mem = MmapOptions::new()
            .len(size_of::<T>() * len as usize)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .with_context(|| format!("mapping {name} into memory"))?;
        Ok(MappedArray { mem, len: len as usize, _map: map, _entries: PhantomData })
    }

    /// Entry `i`. Panics past the end: indexes come from lbd's own constants.
    pub fn ptr(&self, i: usize) -> *mut T {
        assert!(i < self.len, "entry {i} of {}", self.len);
        // In bounds: the mapping holds `len` entries (checked in `new`), page-aligned, and
        // the kernel lays array entries out back to back (sizes are multiples of 8).
        unsafe { (self.mem.as_mut_ptr() as *mut T).add(i) }
    }
}
