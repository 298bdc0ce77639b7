//! Word-sized copies between maps and the packet. Packet data is only 2-aligned (after
//! Ethernet's 14 bytes), and LLVM's BPF backend turns every copy it cannot prove aligned
//! into single bytes: an IPv6 tunnel header's two addresses took 64 instructions and a
//! tenth of the path's time (docs/BENCHMARKS.md). The kernel accepts misaligned loads
//! and stores here (the verifier checks alignment only in strict mode, on architectures
//! without efficient unaligned access), so these are written in assembly, which promises
//! the compiler nothing about alignment. Callers check bounds first (`bytes_at`).

use core::arch::asm;

#[inline(always)]
unsafe fn load_u64(p: *const u8) -> u64 {
    let v: u64;
    unsafe {
        asm!("{v} = *(u64 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(readonly, nostack, preserves_flags));
    }
    v
}

#[inline(always)]
unsafe fn load_u32(p: *const u8) -> u32 {
    let v: u64;
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(readonly, nostack, preserves_flags));
    }
    v as u32
}

#[inline(always)]
unsafe fn store_u32(p: *mut u8, v: u32) {
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v as u64,
            options(nostack, preserves_flags));
    }
}

#[inline(always)]
unsafe fn store_u64(p: *mut u8, v: u64) {
    unsafe {
        asm!("*(u64 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
            options(nostack, preserves_flags));
    }
}

/// Copies 16 bytes (an address) from `src` to `dst`, 8 at a time.
#[inline(always)]
pub unsafe fn copy16(dst: *mut u8, src: *const u8) {
    unsafe {
        store_u64(dst, load_u64(src));
        store_u64(dst.add(8), load_u64(src.add(8)));
    }
}

/// Copies 12 bytes (destination and source MAC) from `src` to `dst`, in two loads and two
/// stores.
#[inline(always)]
pub unsafe fn copy12(dst: *mut u8, src: *const u8) {
    unsafe {
        store_u64(dst, load_u64(src));
        store_u32(dst.add(8), load_u32(src.add(8)));
    }
}
