//! Word-sized loads from the packet, and copies between maps and the packet. Packet data
//! is only 2-aligned (after Ethernet's 14 bytes), and LLVM's BPF backend turns every
//! access it cannot prove aligned into single bytes: an IPv6 tunnel header's two
//! addresses took 64 instructions and a tenth of the path's time, and byte loads of the
//! flow key spread it over forty variables (docs/BENCHMARKS.md). The kernel accepts
//! misaligned loads and stores here (the verifier checks alignment only in strict mode,
//! on architectures without efficient unaligned access), so these are written in
//! assembly, which promises the compiler nothing about alignment. Callers check bounds
//! first (`bytes_at`).

use core::arch::asm;

#[inline(always)]
pub unsafe fn load_u64(p: *const u8) -> u64 {
    let v: u64;
    unsafe {
        asm!("{v} = *(u64 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(readonly, nostack, preserves_flags));
    }
    v
}

#[inline(always)]
pub unsafe fn load_u32(p: *const u8) -> u32 {
    let v: u64;
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(readonly, nostack, preserves_flags));
    }
    v as u32
}

#[inline(always)]
pub unsafe fn store_u32(p: *mut u8, v: u32) {
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v as u64,
            options(nostack, preserves_flags));
    }
}

#[inline(always)]
pub unsafe fn store_u64(p: *mut u8, v: u64) {
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

/// A 16-byte address from the packet, in two loads.
#[inline(always)]
pub unsafe fn addr16(p: *const u8) -> [u8; 16] {
    let (a, b) = unsafe { (load_u64(p), load_u64(p.add(8))) };
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&a.to_ne_bytes());
    addr[8..].copy_from_slice(&b.to_ne_bytes());
    addr
}

/// An IPv4 address from the packet, in one load, as the first word of a 16-byte one.
#[inline(always)]
pub unsafe fn addr4(p: *const u8) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&unsafe { load_u32(p) }.to_ne_bytes());
    addr
}

/// The two ports at the start of a TCP or UDP header (or a quoted one), in one load, as
/// they lie in the header (network order).
#[inline(always)]
pub unsafe fn ports(p: *const u8) -> (u16, u16) {
    let ports = unsafe { load_u32(p) }.to_ne_bytes();
    (u16::from_ne_bytes([ports[0], ports[1]]), u16::from_ne_bytes([ports[2], ports[3]]))
}
