//! The hot table's two big arrays. Allocated once at their full size, backed by transparent
//! huge pages where the kernel allows it, and written through at start: a shard that serves
//! keys scattered over hundreds of MiB otherwise pays a TLB miss (a page walk, nested under
//! virtualisation) on top of the cache miss for every event, and a first-touch page fault
//! the first time each 4 KiB page is used — on the hot path.

use std::mem::size_of;

const HUGE_PAGE: usize = 2 << 20;

/// `len` copies of `fill`, every page touched now (on the calling thread, so on its NUMA
/// node: the shard builds its own state).
pub(super) fn table_vec<T: Copy>(len: usize, fill: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    advise_huge_pages(v.as_ptr().cast(), len * size_of::<T>());
    v.resize(len, fill);
    v
}

/// Ask for huge pages over the 2 MiB-aligned part of `[ptr, ptr + bytes)`. Best effort: with
/// THP off, or on a small allocation, nothing changes but speed.
fn advise_huge_pages(ptr: *const u8, bytes: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside an allocation of `bytes` bytes at `ptr` that the caller
    // owns and has not handed out yet. MADV_HUGEPAGE only changes how the kernel backs those
    // pages; it does not change their contents, mapping or validity.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    if r != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "no transparent huge pages for the hot table"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_vec_is_filled_to_its_length() {
        let v = table_vec(3 * HUGE_PAGE / 8 + 5, 7u64);
        assert_eq!(v.len(), 3 * HUGE_PAGE / 8 + 5);
        assert!(v.iter().all(|&x| x == 7));
        assert!(table_vec(0, 1u8).is_empty());
    }
}
