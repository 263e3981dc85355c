//! Keeps glibc's allocator from holding on to memory the agent no longer uses (BENCHMARKS.md,
//! target 4: at most 10 MiB resident, and flat).
//!
//! The agent's live heap is small (about 1.2 MiB with 100 resources), but glibc gives threads
//! that allocate at the same time separate arenas, and every arena keeps the memory freed into
//! it, in pages that a few live allocations pin. With two async workers and up to 16 blocking
//! threads that was about 1.7 MiB of arenas beside the main heap, slowly growing. So the agent
//! uses one arena (per-thread caches still serve most small allocations without the lock), and
//! gives the free pages back to the kernel after each pass.
//!
//! This is the only module that may use `unsafe`: two calls into glibc that take plain
//! integers. Other C libraries (musl) and other systems get no-ops.

#![allow(unsafe_code)]

/// Limits glibc to a single malloc arena. Call it first thing in `main`, before any thread
/// starts: arenas already created are kept. An explicit `MALLOC_ARENA_MAX` or
/// `glibc.malloc.arena_max` tunable in the environment is left to win.
pub fn use_one_malloc_arena() {
    let configured = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|tunables| tunables.contains("arena_max"));
    if !configured {
        imp::set_arena_max(1);
    }
}

/// Returns the allocator's free pages, in every arena, to the kernel. Meant for the end of a
/// pass, when the pass's temporary allocations have all been freed; it costs well under a
/// millisecond on the agent's heap.
pub fn release_free_memory() {
    imp::trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use nix::libc;

    pub(super) fn set_arena_max(arenas: libc::c_int) {
        // SAFETY: mallopt takes two integers and no pointers, has no precondition, and takes
        // glibc's own arena lock, so it is sound from any thread at any time; glibc rejects a
        // value it does not accept (returns 0), which leaves its default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }

    pub(super) fn trim() {
        // SAFETY: malloc_trim takes an integer (the bytes to keep at the top of the heap) and
        // no pointers; it locks each arena in turn and only returns pages that hold no live
        // allocation (madvise/sbrk), so it is sound from any thread while others allocate.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn set_arena_max(_arenas: i32) {}

    pub(super) fn trim() {}
}

#[cfg(test)]
mod tests;
