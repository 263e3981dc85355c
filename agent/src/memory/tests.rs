//! Tests of the allocator calls: they can be made while the agent allocates.

use super::*;

#[test]
fn the_allocator_calls_can_be_made_while_allocating() {
    use_one_malloc_arena();
    let kept: Vec<Vec<u8>> = (0..64).map(|size| vec![1; size * 1024]).collect();
    release_free_memory();
    assert!(
        kept.iter()
            .enumerate()
            .all(|(size, v)| v.len() == size * 1024)
    );
}
